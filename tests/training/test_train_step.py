"""Tests of w2v_jax/train_step.py: the sharded pure step, non-finite skipping, compile counts, accumulation.

A smaller-than-tiny model (3 conv layers, 1 Transformer layer: compiles in half the time) on
0.25 s of noise per utterance; compiled steps and initial states are shared between tests (module
fixtures) because each compile costs many seconds on the 2-core CI machine.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2v_jax import sharding
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.pretraining.objective import PretrainingObjective
from w2v_jax.quantization import gumbel_temperature
from w2v_jax.training import optim, train_step

BATCH, SAMPLES = 8, 4000
CONFIG = Wav2Vec2Config.preset(
    "tiny", conv_dim=(32, 32, 32), conv_kernel=(10, 4, 4), conv_stride=(5, 4, 4), num_hidden_layers=1
)
SCHEDULE = optim.learning_rate_schedule(1e-3, 100, 4)
HPARAMS = train_step.StepHyperparams(learning_rate=SCHEDULE, objective=PretrainingObjective(gumbel_decay=0.9))


def make_batch(seed: int, samples: int = SAMPLES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input_values": rng.normal(size=(BATCH, samples)).astype(np.float32),
        "attention_mask": np.ones((BATCH, samples), np.int32),
    }


@dataclasses.dataclass
class Setup:
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    shardings: object
    step: train_step.TrainStep
    initial_state: train_step.TrainState

    def fresh_state(self) -> train_step.TrainState:
        """A copy of the initial state (the step donates its input, the original must survive)."""
        return jax.tree.map(jnp.copy, self.initial_state)


def make_setup(num_devices: int, hparams: train_step.StepHyperparams = HPARAMS, fsdp: int = 1, **state_kwargs) -> Setup:
    mesh = sharding.make_mesh(fsdp=fsdp, devices=jax.devices()[:num_devices])
    optimizer = optim.make_optimizer()
    graphdef, state, shardings = train_step.create_train_state(
        CONFIG, optimizer, model_class=Wav2Vec2ForPreTraining, seed=0, mesh=mesh, **state_kwargs
    )
    return Setup(mesh, graphdef, shardings, train_step.TrainStep(graphdef, optimizer, hparams, mesh, shardings), state)


@pytest.fixture(scope="module")
def setup8() -> Setup:
    return make_setup(8)


@pytest.fixture(scope="module")
def setup1() -> Setup:
    return make_setup(1)


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def test_state_is_sharded_as_asked(setup8):
    state = setup8.fresh_state()
    kernel = state.params["project_hid"]["kernel"]
    assert kernel.get_value().sharding.spec == jax.sharding.PartitionSpec()
    assert len(kernel.get_value().sharding.device_set) == 8
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))


def test_sharded_step_matches_single_device(setup8, setup1):
    """The same global batch on 8 devices (replicated or FSDP parameters) and on 1: same loss, metrics, parameters."""
    fsdp = make_setup(8, fsdp=4, param_sharding="fsdp", min_fsdp_size=256)
    encoder = fsdp.initial_state.params["wav2vec2"]["encoder"]
    kernel = encoder["layers"][0]["feed_forward"]["intermediate_dense"]["kernel"]
    assert "fsdp" in kernel.get_value().sharding.spec
    key = jax.random.key(3)
    results = []
    for setup in (setup8, fsdp, setup1):
        state = setup.fresh_state()
        for seed in (0, 1):
            state, metrics = setup.step(state, make_batch(seed), key)
        results.append((host(state.params), host(metrics)))
    params1, metrics1 = results[-1]
    for params, metrics in results[:-1]:
        for name in ("loss", "contrastive_loss", "diversity_loss", "accuracy", "code_perplexity", "grad_norm"):
            np.testing.assert_allclose(metrics[name], metrics1[name], rtol=1e-5, err_msg=name)
        assert metrics["num_masked"] == metrics1["num_masked"]
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params1)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_metrics_match_the_model_and_schedules(setup8):
    """Step 0's loss is the model's loss per masked frame with the step's key; lr/temperature from the step."""
    state = setup8.fresh_state()
    params_before = host(state.params)
    key = jax.random.key(7)
    batch = make_batch(2)
    state, metrics = setup8.step(state, batch, key)

    model = nnx.merge(setup8.graphdef, jax.tree.map(jnp.asarray, params_before), nnx.State({}))
    step_key = train_step.model_key(key, 0, 0)  # step 0, micro-batch 0
    np.testing.assert_array_equal(
        jax.random.key_data(step_key), jax.random.key_data(jax.random.fold_in(jax.random.fold_in(key, 0), 0))
    )
    out = jax.jit(lambda x, m: model(x, attention_mask=m, deterministic=False, gumbel_temperature=2.0, key=step_key))(
        batch["input_values"], batch["attention_mask"]
    )
    np.testing.assert_allclose(metrics["loss"], out.loss / out.num_masked, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], out.accuracy, rtol=1e-5)
    assert metrics["num_masked"] == out.num_masked
    assert float(metrics["learning_rate"]) == float(SCHEDULE(0)) == 0.0
    # Step 1 draws afresh: its key folds in the step counter (an update that reused step 0's masks,
    # distractors, dropout and Gumbel noise would fail here), on the same batch as step 0.
    params_before = host(state.params)
    state, metrics = setup8.step(state, batch, key)
    np.testing.assert_allclose(metrics["learning_rate"], SCHEDULE(1), rtol=1e-6)
    np.testing.assert_allclose(metrics["gumbel_temperature"], gumbel_temperature(1, 2.0, 0.5, 0.9), rtol=1e-6)
    assert int(state.step) == 2
    model = nnx.merge(setup8.graphdef, jax.tree.map(jnp.asarray, params_before), nnx.State({}))
    temperature = float(gumbel_temperature(1, 2.0, 0.5, 0.9))

    def run(step_key):
        return jax.jit(
            lambda x, m: model(x, attention_mask=m, deterministic=False, gumbel_temperature=temperature, key=step_key)
        )(batch["input_values"], batch["attention_mask"])

    out = run(jax.random.fold_in(jax.random.fold_in(key, 1), 0))
    np.testing.assert_allclose(metrics["loss"], out.loss / out.num_masked, rtol=1e-5)
    stale = run(step_key)
    assert not np.array_equal(out.mask_time_indices, stale.mask_time_indices)


def test_nan_batch_is_skipped_and_counted(setup8):
    state = setup8.fresh_state()
    key = jax.random.key(0)
    state, _ = setup8.step(state, make_batch(0), key)
    before = host((state.params, state.opt_state))
    bad = make_batch(1)
    bad["input_values"][3, 100] = np.nan
    state, metrics = setup8.step(state, bad, key)
    assert int(metrics["skipped_nonfinite"]) == 1
    assert int(state.nonfinite_total) == 1 and int(state.nonfinite_consecutive) == 1
    assert int(state.step) == 2  # the batch was consumed
    after = host((state.params, state.opt_state))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)  # bit for bit
    state, metrics = setup8.step(state, make_batch(2), key)
    assert int(metrics["skipped_nonfinite"]) == 0
    assert int(state.nonfinite_total) == 1 and int(state.nonfinite_consecutive) == 0
    assert np.isfinite(float(metrics["loss"]))
    changed = host(state.params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[0]), jax.tree.leaves(changed)))


@dataclasses.dataclass(frozen=True)
class ZeroNormObjective(PretrainingObjective):
    """The pretraining loss plus the norm of a zero vector: a finite loss (the norm is 0) whose
    gradient is not (d|x|/dx = x / |x| = 0 / 0 at x = 0)."""

    def loss(self, model, micro, key, step):
        loss, sums, counts = super().loss(model, micro, key, step)
        return loss + jnp.linalg.norm(0.0 * model.project_q.bias[...]), sums, counts


def test_a_finite_loss_with_a_non_finite_gradient_is_skipped_too():
    setup = make_setup(1, dataclasses.replace(HPARAMS, objective=ZeroNormObjective(gumbel_decay=0.9)))
    state = setup.fresh_state()
    before = host((state.params, state.opt_state))
    state, metrics = setup.step(state, make_batch(0), jax.random.key(0))
    assert np.isfinite(float(metrics["loss"])) and not np.isfinite(float(metrics["grad_norm"]))
    assert int(metrics["skipped_nonfinite"]) == 1 and int(state.nonfinite_total) == 1
    after = host((state.params, state.opt_state))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)  # bit for bit: no NaN reached the parameters or Adam's moments


def test_compiles_once_per_batch_shape(setup1):
    state = setup1.fresh_state()
    key = jax.random.key(0)
    other = SAMPLES + 800
    for seed, samples in enumerate([SAMPLES, other, SAMPLES, other, SAMPLES, other]):
        state, _ = setup1.step(state, make_batch(seed, samples), key)
    assert setup1.step.num_compiles == 2  # one per shape, however many steps


def test_gradient_accumulation_matches_a_loop_over_micro_batches(setup1):
    """accum=2: the update uses the summed micro-batch gradients / total masked frames."""
    optimizer = optim.make_optimizer()
    hparams = dataclasses.replace(HPARAMS, grad_accum_steps=2)
    step = train_step.TrainStep(setup1.graphdef, optimizer, hparams, setup1.mesh, setup1.shardings)
    params0 = host(setup1.initial_state.params)
    opt_state0 = host(setup1.initial_state.opt_state)
    key = jax.random.key(5)
    batch = make_batch(4)
    # Padding in micro-batch 1 only (odd rows): the micro-batches mask different numbers of frames.
    batch["attention_mask"][1::2, SAMPLES // 2 :] = 0
    state, metrics = step(setup1.fresh_state(), batch, key)

    # Oracle: micro-batch i holds rows i, i + 2, i + 4, ... and the key fold_in(fold_in(key, 0), i).
    model_params = jax.tree.map(jnp.asarray, params0)

    @jax.jit
    def summed_grads(params, x, m, k):
        def loss(p):
            out = nnx.merge(setup1.graphdef, p, nnx.State({}))(
                x, attention_mask=m, deterministic=False, gumbel_temperature=2.0, key=k
            )
            return out.loss, (out.num_masked, out.num_correct, out.chance_correct)

        return jax.grad(loss, has_aux=True)(params)

    masked, correct, chance = [], [], []
    grads_sum = None
    for i in range(2):
        rows = slice(i, None, 2)
        g, (n, c, h) = summed_grads(
            model_params,
            batch["input_values"][rows],
            batch["attention_mask"][rows],
            jax.random.fold_in(jax.random.fold_in(key, 0), i),
        )
        masked.append(int(n))
        correct.append(int(c))
        chance.append(float(h))
        grads_sum = g if grads_sum is None else jax.tree.map(np.add, host(grads_sum), host(g))
    total_masked = sum(masked)
    grads = jax.tree.map(lambda g: g / np.float32(total_masked), host(grads_sum))
    assert int(metrics["num_masked"]) == total_masked
    # Accuracy is divided once: summed counts, not the mean of the micro-batches' fractions
    # (which differ here, so the two would disagree).
    assert masked[0] != masked[1] and correct[0] / masked[0] != correct[1] / masked[1], (masked, correct)
    assert int(metrics["num_correct"]) == sum(correct)
    np.testing.assert_allclose(metrics["accuracy"], sum(correct) / total_masked, rtol=1e-6)
    np.testing.assert_allclose(metrics["chance_accuracy"], sum(chance) / total_masked, rtol=1e-6)
    want_norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))
    np.testing.assert_allclose(metrics["grad_norm"], want_norm, rtol=1e-5)
    opt_state = optim.set_learning_rate(jax.tree.map(jnp.asarray, opt_state0), SCHEDULE(0))
    updates, _ = jax.jit(optimizer.update)(grads, opt_state, model_params)
    want = jax.tree.map(np.add, params0, host(updates))
    for a, b in zip(jax.tree.leaves(host(state.params)), jax.tree.leaves(host(want))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bfloat16_compute_keeps_float32_master_weights(setup1):
    optimizer = optim.make_optimizer()
    graphdef, abstract, shardings = train_step.abstract_train_state(
        CONFIG, optimizer, model_class=Wav2Vec2ForPreTraining, mesh=setup1.mesh, dtype=jnp.bfloat16
    )
    # Same parameters as the float32 model: only the computation dtype (in the graphdef) differs.
    assert jax.tree.structure(abstract) == jax.tree.structure(setup1.initial_state)
    step = train_step.TrainStep(graphdef, optimizer, HPARAMS, setup1.mesh, shardings)
    state, metrics = step(setup1.fresh_state(), make_batch(0), jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    moments = [x for x in jax.tree.leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert all(x.dtype == jnp.float32 for x in moments)
    assert np.isfinite(float(metrics["loss"])) and int(metrics["skipped_nonfinite"]) == 0
    _, metrics32 = setup1.step(setup1.fresh_state(), make_batch(0), jax.random.key(0))
    # bf16 keeps 8 significant bits: a relative 2^-8 = 3.9e-3 per rounding. The loss is float32 (the
    # contrastive logits and their softmax are computed in float32 from the bf16 projected vectors),
    # so its error is the vectors': their roundings through the encoder are relative to each
    # activation and average over the masked frames' cosine similarities rather than add up with
    # depth. Measured over 6 batches x 2 keys: at most 2.2e-3 relative (0.56 x 2^-8); the bound is two
    # roundings, 2 x 2^-8 = 7.8e-3, 3.5x the worst measured.
    np.testing.assert_allclose(metrics["loss"], metrics32["loss"], rtol=2 * 2.0**-8)


def test_check_batch_names_the_problem():
    with pytest.raises(ValueError, match="input_values"):
        train_step.check_batch({"x": np.zeros((8, 10))}, 8)
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        train_step.check_batch({"input_values": np.zeros((8,))}, 8)
    with pytest.raises(ValueError, match="4 rows, expected 8"):
        train_step.check_batch({"input_values": np.zeros((4, 10))}, 8)
    with pytest.raises(ValueError, match="attention_mask"):
        train_step.check_batch({"input_values": np.zeros((8, 10)), "attention_mask": np.zeros((8, 9))}, 8)
