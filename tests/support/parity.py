"""The reference models of the parity tests: transformers' models of several configurations."""

import numpy as np
import torch
import transformers

from w2v_jax.config import Wav2Vec2Config

# Parity needs transformers' objective: no fairseq feature penalty, full encoder gradient.
TRANSFORMERS_OBJECTIVE = dict(feature_penalty_weight=0.0, feature_grad_mult=1.0)

CONFIGS = {
    # BASE's layout: group norm, post-LN; no attention mask.
    "group_post_ln": Wav2Vec2Config.preset("tiny", **TRANSFORMERS_OBJECTIVE),
    # LARGE's layout (layer norm with conv biases, pre-LN) with odd sizes everywhere, an odd
    # positional kernel, tanh GELU, G=3 V=7; padded batch.
    "layer_pre_ln_odd": Wav2Vec2Config.preset(
        "tiny",
        conv_dim=(17, 19, 23, 19, 17, 21, 29),
        feat_extract_norm="layer",
        conv_bias=True,
        do_stable_layer_norm=True,
        hidden_size=36,
        num_attention_heads=3,
        intermediate_size=50,
        hidden_act="gelu_new",
        num_conv_pos_embeddings=5,
        num_conv_pos_embedding_groups=3,
        num_codevector_groups=3,
        num_codevectors_per_group=7,
        codevector_dim=21,
        proj_codevector_dim=11,
        num_negatives=5,
        layer_norm_eps=1e-6,
        **TRANSFORMERS_OBJECTIVE,
    ),
    # Layer norm, post-LN, one codebook of 5, ReLU; padded batch.
    "layer_post_ln_g1": Wav2Vec2Config.preset(
        "tiny",
        feat_extract_norm="layer",
        hidden_act="relu",
        num_codevector_groups=1,
        num_codevectors_per_group=5,
        codevector_dim=12,
        **TRANSFORMERS_OBJECTIVE,
    ),
}


def reference_checkpoint(
    config: Wav2Vec2Config, folder, cls: type[torch.nn.Module] = transformers.Wav2Vec2ForPreTraining
) -> torch.nn.Module:
    """A random transformers model with every parameter perturbed (LayerNorms away from 1 / 0), saved."""
    torch.manual_seed(0)
    model = cls(transformers.Wav2Vec2Config(**config.to_hf_dict()))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)
    return model.eval()


def relative_error(ours, reference) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(ours - reference)) / max(np.max(np.abs(reference)), 1e-30))
