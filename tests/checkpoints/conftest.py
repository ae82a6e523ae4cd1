"""Fixtures of the checkpoint tests."""

import orbax.checkpoint as ocp
import pytest


@pytest.fixture
def read_arrays(monkeypatch) -> list[str]:
    """The names (`params.kernel`, `opt_state.0.mu.bias`, ...) of the arrays orbax reads from disk."""
    names = []
    deserialize = ocp.type_handlers.ArrayHandler.deserialize

    async def recording(self, infos, args=None):
        names.extend(info.name for info in infos)
        return await deserialize(self, infos, args)

    monkeypatch.setattr(ocp.type_handlers.ArrayHandler, "deserialize", recording)
    return names
