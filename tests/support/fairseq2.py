"""fairseq2-style checkpoints built without fairseq2, from fairseq-style weights.

fairseq2 0.8.1 converts fairseq's wav2vec 2.0 files with regex key maps
(`fairseq2/models/wav2vec2/interop.py` for pretraining, `asr/interop.py` for CTC): `FAIRSEQ_TO_FAIRSEQ2`
and `CTC_FAIRSEQ_TO_FAIRSEQ2` below are those maps, applied as fairseq2 applies them (the first pattern
that changes a key wins; a post-LN model's `encoder.layer_norm` moved to `encoder_frontend.layer_norm`
first; `quantizer.num_updates` added). One correction: fairseq2's pretraining map sends
`encoder.pos_conv.0.` to `encoder_frontend.pos_encoder.layers.0.conv.`, a stacked position encoder's
name; a one-layer `Wav2Vec2PositionEncoder` (every preset) names its conv `encoder_frontend.pos_encoder.conv`
(`position_encoder.py`), as the CTC map does. The same fairseq weights go into transformers through
its converter's table (`tests.support.fairseq.transformers_state_dict`): an import of the fairseq2
file must compute what that transformers model computes, without sharing our key map.
"""

import re

import torch

FAIRSEQ_TO_FAIRSEQ2 = {
    r"^encoder\.layers\.([0-9]+)\.self_attn\.out_proj\.": r"encoder.layers.\1.self_attn.output_proj.",
    r"^encoder\.layers\.([0-9]+)\.fc1\.": r"encoder.layers.\1.ffn.inner_proj.",
    r"^encoder\.layers\.([0-9]+)\.fc2\.": r"encoder.layers.\1.ffn.output_proj.",
    r"^encoder\.layers\.([0-9]+)\.final_layer_norm\.": r"encoder.layers.\1.ffn_layer_norm.",
    r"^encoder\.pos_conv\.0\.": r"encoder_frontend.pos_encoder.conv.",
    r"^feature_extractor\.conv_layers\.([0-9]+)\.0\.": r"encoder_frontend.feature_extractor.layers.\1.conv.",
    r"^feature_extractor\.conv_layers\.([0-9]+)\.2\.1\.": r"encoder_frontend.feature_extractor.layers.\1.layer_norm.",
    r"^feature_extractor\.conv_layers\.0\.2\.": r"encoder_frontend.feature_extractor.layers.0.group_norm.",
    r"^layer_norm\.": r"encoder_frontend.post_extract_layer_norm.",
    r"^post_extract_proj\.": r"encoder_frontend.model_dim_proj.",
    r"^mask_emb": r"masker.temporal_mask_embed",
    r"^quantizer\.vars": r"quantizer.entries",
    r"^quantizer\.weight_proj\.": r"quantizer.entry_proj.",
    r"^project_q\.": r"final_target_proj.",
}
_W2V = r"^w2v_encoder\.w2v_model\."
CTC_FAIRSEQ_TO_FAIRSEQ2 = {
    _W2V + r"encoder\.layers\.([0-9]+)\.self_attn_layer_norm\.": r"encoder.layers.\1.self_attn_layer_norm.",
    _W2V + r"encoder\.layers\.([0-9]+)\.self_attn\.q_proj\.": r"encoder.layers.\1.self_attn.q_proj.",
    _W2V + r"encoder\.layers\.([0-9]+)\.self_attn\.k_proj\.": r"encoder.layers.\1.self_attn.k_proj.",
    _W2V + r"encoder\.layers\.([0-9]+)\.self_attn\.v_proj\.": r"encoder.layers.\1.self_attn.v_proj.",
    _W2V + r"encoder\.layers\.([0-9]+)\.self_attn\.out_proj\.": r"encoder.layers.\1.self_attn.output_proj.",
    _W2V + r"encoder\.layers\.([0-9]+)\.fc1\.": r"encoder.layers.\1.ffn.inner_proj.",
    _W2V + r"encoder\.layers\.([0-9]+)\.fc2\.": r"encoder.layers.\1.ffn.output_proj.",
    _W2V + r"encoder\.layers\.([0-9]+)\.final_layer_norm\.": r"encoder.layers.\1.ffn_layer_norm.",
    _W2V + r"encoder\.layer_norm\.": r"encoder.layer_norm.",
    _W2V + r"encoder\.pos_conv\.0\.": r"encoder_frontend.pos_encoder.conv.",
    _W2V + r"feature_extractor\.conv_layers\.([0-9]+)\.0\.": r"encoder_frontend.feature_extractor.layers.\1.conv.",
    _W2V
    + r"feature_extractor\.conv_layers\.([0-9]+)\.2\.1\.": r"encoder_frontend.feature_extractor.layers.\1.layer_norm.",
    _W2V + r"feature_extractor\.conv_layers\.0\.2\.": r"encoder_frontend.feature_extractor.layers.0.group_norm.",
    _W2V + r"layer_norm\.": r"encoder_frontend.post_extract_layer_norm.",
    _W2V + r"post_extract_proj\.": r"encoder_frontend.model_dim_proj.",
    _W2V + r"mask_emb": r"masker.temporal_mask_embed",
    r"^w2v_encoder\.proj\.": r"final_proj.",
}


def _convert(weights: dict, key_map: dict) -> dict:
    out = {}
    for key, value in weights.items():
        for pattern, replacement in key_map.items():
            if (renamed := re.sub(pattern, replacement, key)) != key:
                key = renamed
                break
        out[key] = value
    return out


def fairseq2_from_fairseq(weights: dict, *, pre_ln: bool, ctc: bool, num_updates: int = 0) -> dict:
    """fairseq-style weights (`tests.support.fairseq.fairseq_weights`) -> fairseq2's state dict."""
    weights = dict(weights)
    prefix = "w2v_encoder.w2v_model." if ctc else ""
    if not pre_ln:  # fairseq2's post-LN frontend holds the norm after the positional conv
        for attribute in ("weight", "bias"):
            weights[f"encoder_frontend.layer_norm.{attribute}"] = weights.pop(f"{prefix}encoder.layer_norm.{attribute}")
    out = _convert(weights, CTC_FAIRSEQ_TO_FAIRSEQ2 if ctc else FAIRSEQ_TO_FAIRSEQ2)
    if not ctc:
        out["quantizer.num_updates"] = torch.tensor(num_updates, dtype=torch.int64)
    return out


def save_fairseq2_style(path, state_dict: dict, *, layout: str = "bare", module_prefix: bool = False) -> None:
    """A fairseq2 file: 0.5+'s bare state dict (`layout="bare"`) or 0.3-0.4's `{"model": ...,
    "model_key": "model", "fs2": True}`; `module_prefix` adds DDP's `module.` to every key."""
    if module_prefix:
        state_dict = {f"module.{k}": v for k, v in state_dict.items()}
    state = state_dict if layout == "bare" else {"model": state_dict, "model_key": "model", "fs2": True}
    torch.save(state, path)
