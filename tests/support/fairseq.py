"""fairseq-style checkpoints built without fairseq, and transformers' converter's mapping of them.

Keys and shapes come from `fairseq/models/wav2vec/wav2vec2.py` and `wav2vec2_asr.py`; files are
saved with `torch.save` as fairseq's trainer saves them (`args` Namespace or hydra `cfg`, a real
OmegaConf DictConfig). `transformers_state_dict` applies transformers' converter's table
(`convert_wav2vec2_original_pytorch_checkpoint_to_pytorch.py`) as the converter does: the reference
the import is checked against.
"""

import argparse
import collections

import torch
from omegaconf import OmegaConf

# The model fields of public checkpoints' configs, as torchaudio keeps them
# (test/torchaudio_unittest/assets/wav2vec2/fairseq/*.json in pytorch/audio; masking and
# training-only fields that are fairseq's defaults left out).
_PUBLIC_COMMON = dict(
    activation_fn="gelu",
    conv_feature_layers="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2",
    conv_pos=128,
    conv_pos_groups=16,
    latent_dim=0,
    latent_groups=2,
    latent_vars=320,
    logit_temp=0.1,
    mask_prob=0.65,
    mask_selection="static",
    num_negatives=100,
    quantize_input=False,
    quantize_targets=True,
    quantizer_depth=1,
    target_glu=False,
    codebook_negatives=0,
    cross_sample_negatives=0,
    negatives_from_everywhere=False,
)
_LARGE_SIZE = dict(encoder_attention_heads=16, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096, encoder_layers=24)
PUBLIC_MODELS = {
    "wav2vec_small": dict(
        _PUBLIC_COMMON,
        _name="wav2vec2",
        extractor_mode="default",
        layer_norm_first=False,
        conv_bias=False,
        encoder_attention_heads=12,
        encoder_embed_dim=768,
        encoder_ffn_embed_dim=3072,
        encoder_layers=12,
        final_dim=256,
        feature_grad_mult=0.1,
    ),
    "libri960_big": dict(
        _PUBLIC_COMMON,
        **_LARGE_SIZE,
        _name="wav2vec2",
        extractor_mode="default",
        layer_norm_first=False,
        conv_bias=False,
        final_dim=768,
        feature_grad_mult=0.1,
        encoder_layerdrop=0.2,
    ),
    "wav2vec_vox_new / xlsr_53_56k / xlsr_300m": dict(
        _PUBLIC_COMMON,
        **_LARGE_SIZE,
        _name="wav2vec2",
        extractor_mode="layer_norm",
        layer_norm_first=True,
        conv_bias=True,
        final_dim=768,
        feature_grad_mult=1.0,
    ),
}


def fairseq_weights(fields: dict, vocab_size: int | None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with fairseq's keys and shapes (wav2vec2.py; wav2vec2_asr.py's Wav2VecCtc
    when `vocab_size`: encoder under `w2v_encoder.w2v_model.`, no pretraining modules, `proj`)."""
    generator = torch.Generator().manual_seed(seed)
    conv = eval(fields["conv_feature_layers"])  # the test's own constant
    dim, ffn, groups = fields["encoder_embed_dim"], fields["encoder_ffn_embed_dim"], fields["latent_groups"]
    final = fields["final_dim"]
    shapes: dict[str, tuple] = {}
    channels = 1
    for i, (out, kernel, _) in enumerate(conv):
        shapes[f"feature_extractor.conv_layers.{i}.0.weight"] = (out, channels, kernel)
        if fields["conv_bias"]:
            shapes[f"feature_extractor.conv_layers.{i}.0.bias"] = (out,)
        if fields["extractor_mode"] == "layer_norm":
            shapes |= {f"feature_extractor.conv_layers.{i}.2.1.{p}": (out,) for p in ("weight", "bias")}
        elif i == 0:
            shapes |= {f"feature_extractor.conv_layers.0.2.{p}": (out,) for p in ("weight", "bias")}
        channels = out
    shapes |= {"post_extract_proj.weight": (dim, channels), "post_extract_proj.bias": (dim,), "mask_emb": (dim,)}
    shapes |= {"layer_norm.weight": (channels,), "layer_norm.bias": (channels,)}
    if vocab_size is None:
        shapes |= {
            "quantizer.vars": (1, groups * fields["latent_vars"], final // groups),
            "quantizer.weight_proj.weight": (groups * fields["latent_vars"], channels),
            "quantizer.weight_proj.bias": (groups * fields["latent_vars"],),
            "project_q.weight": (final, final),
            "project_q.bias": (final,),
            "final_proj.weight": (final, dim),
            "final_proj.bias": (final,),
        }
    kernel = fields["conv_pos"]
    shapes |= {
        "encoder.pos_conv.0.bias": (dim,),
        "encoder.pos_conv.0.weight_g": (1, 1, kernel),
        "encoder.pos_conv.0.weight_v": (dim, dim // fields["conv_pos_groups"], kernel),
        "encoder.layer_norm.weight": (dim,),
        "encoder.layer_norm.bias": (dim,),
    }
    for layer in range(fields["encoder_layers"]):
        prefix = f"encoder.layers.{layer}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes |= {f"{prefix}self_attn.{proj}.weight": (dim, dim), f"{prefix}self_attn.{proj}.bias": (dim,)}
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes |= {f"{prefix}{norm}.weight": (dim,), f"{prefix}{norm}.bias": (dim,)}
        shapes |= {f"{prefix}fc1.weight": (ffn, dim), f"{prefix}fc1.bias": (ffn,)}
        shapes |= {f"{prefix}fc2.weight": (dim, ffn), f"{prefix}fc2.bias": (dim,)}
    if vocab_size is not None:
        shapes = {f"w2v_encoder.w2v_model.{k}": v for k, v in shapes.items()}
        shapes |= {"w2v_encoder.proj.weight": (vocab_size, dim), "w2v_encoder.proj.bias": (vocab_size,)}
    weights = collections.OrderedDict()
    for key, shape in shapes.items():
        value = torch.randn(shape, generator=generator) * 0.5
        if key.endswith(("norm.weight", ".2.weight", ".2.1.weight", "weight_g")):
            value = 1.0 + 0.2 * value  # norms and weight-norm gains away from 0
        weights[key] = value
    return weights


# transformers' converter's table (convert_wav2vec2_original_pytorch_checkpoint_to_pytorch.py:
# MAPPING and TOP_LEVEL_KEYS, substring matches, `*` the layer index), applied as it applies it.
_CONVERTER_MAPPING = {
    "post_extract_proj": "feature_projection.projection",
    "encoder.pos_conv.0": "encoder.pos_conv_embed.conv",
    "self_attn.k_proj": "encoder.layers.*.attention.k_proj",
    "self_attn.v_proj": "encoder.layers.*.attention.v_proj",
    "self_attn.q_proj": "encoder.layers.*.attention.q_proj",
    "self_attn.out_proj": "encoder.layers.*.attention.out_proj",
    "self_attn_layer_norm": "encoder.layers.*.layer_norm",
    "fc1": "encoder.layers.*.feed_forward.intermediate_dense",
    "fc2": "encoder.layers.*.feed_forward.output_dense",
    "final_layer_norm": "encoder.layers.*.final_layer_norm",
    "encoder.layer_norm": "encoder.layer_norm",
    "w2v_model.layer_norm": "feature_projection.layer_norm",
    "quantizer.weight_proj": "quantizer.weight_proj",
    "quantizer.vars": "quantizer.codevectors",
    "project_q": "project_q",
    "final_proj": "project_hid",
    "w2v_encoder.proj": "lm_head",
    "mask_emb": "masked_spec_embed",
}
_TOP_LEVEL = ("lm_head", "quantizer.weight_proj", "quantizer.codevectors", "project_q", "project_hid")


def transformers_state_dict(weights: dict, group_norm: bool) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in weights.items():
        if "conv_layers" in name:
            layer, kind = (int(x) for x in name.split("conv_layers.")[-1].split(".")[:2])
            attribute = name.rsplit(".", 1)[1]
            if kind == 0:
                out[f"wav2vec2.feature_extractor.conv_layers.{layer}.conv.{attribute}"] = value
            elif kind == 2 and (not group_norm or layer == 0):
                out[f"wav2vec2.feature_extractor.conv_layers.{layer}.layer_norm.{attribute}"] = value
            continue
        # The pretraining model's own feature LayerNorm is `layer_norm` (the converter sees it
        # as `w2v_model.layer_norm` inside a fine-tuned model).
        lookup = name if name.startswith("w2v_encoder") else f"w2v_model.{name}"
        for key, mapped in _CONVERTER_MAPPING.items():
            if key in lookup and not (key == "encoder.layer_norm" and "layers." in lookup):
                if "*" in mapped:
                    mapped = mapped.replace("*", lookup.split(key)[0].split(".")[-2])
                mapped = mapped if mapped in _TOP_LEVEL else f"wav2vec2.{mapped}"
                suffix = "" if key in ("mask_emb", "quantizer.vars") else "." + name.rsplit(".", 1)[1]
                out[mapped + suffix] = value
                break
    return out


def save_fairseq_style(path, weights, fields, style, ctc=False, extra=True):
    """A checkpoint as fairseq's trainer saves it (`checkpoint_utils.save_state`)."""
    task = {"_name": "audio_pretraining", "data": "/data", "normalize": fields["extractor_mode"] == "layer_norm"}
    criterion = {"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 10.0]}
    state = {"model": weights}
    if extra:
        adam = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]}
        state |= {
            "optimizer_history": [{"criterion_name": "Wav2vecCriterion", "num_updates": 400000}],
            "extra_state": {"epoch": 3, "ema": {"w": torch.ones(2)}},
            "last_optimizer_state": adam,
        }
    pretraining = {"task": task, "model": fields, "criterion": criterion}
    if style == "cfg":
        model = fields
        if ctc:
            model = {"_name": "wav2vec_ctc", "w2v_args": pretraining, "final_dropout": 0.1, "apply_mask": True}
            model |= {"mask_prob": 0.5, "mask_channel_prob": 0.25, "mask_channel_length": 64, "layerdrop": 0.1}
            model |= {"normalize": "${task.normalize}"}
            task = task | {"_name": "audio_finetuning", "labels": "ltr"}
            criterion = {"_name": "ctc", "zero_infinity": True}
        state |= {"args": None, "cfg": OmegaConf.create({"task": task, "model": model, "criterion": criterion})}
    else:
        flat = {k: v for k, v in fields.items() if k != "_name"} | {"arch": "wav2vec2", "task": "audio_pretraining"}
        flat |= {"loss_weights": [0.1, 10.0], "normalize": task["normalize"], "lr": [0.0005]}
        if ctc:
            w2v_args = argparse.Namespace(**flat)
            flat = {"arch": "wav2vec_ctc", "w2v_args": w2v_args, "final_dropout": 0.1, "apply_mask": True}
            flat |= {"mask_prob": 0.5, "mask_channel_prob": 0.25, "mask_channel_length": 64, "layerdrop": 0.1}
            flat |= {"normalize": task["normalize"], "zero_infinity": True, "task": "audio_pretraining"}
        state |= {"args": argparse.Namespace(**flat)}
    torch.save(state, path)
    return state
