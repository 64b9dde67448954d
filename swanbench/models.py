"""Named LLaMA presets built from `transformers.LlamaConfig` (random init, nothing from a hub).

The GaLore benchmark sizes keep their config names and shapes (9m ... 7b; untied embeddings, SiLU,
RMSNorm eps 1e-6, vocab 32000 for the T5 tokenizer). The small presets (`nano`, `micro`, `mini`,
`micro-deep`) train in minutes on 2 CPU cores and have a vocab sized for the embedded corpus's byte-level BPE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swanbench.hints import did_you_mean


@dataclass(frozen=True)
class ModelPreset:
    name: str
    hidden: int
    intermediate: int
    heads: int
    layers: int
    vocab: int
    max_positions: int = 1024

    def param_count(self) -> int:
        """Trainable parameters: embeddings + head (untied) + per layer 4 h^2 attention, 3 h*i MLP, 2 norms."""
        h, i = self.hidden, self.intermediate
        per_layer = 4 * h * h + 3 * h * i + 2 * h
        return 2 * self.vocab * h + self.layers * per_layer + h

    def hidden_matrix_shapes(self) -> list[tuple[int, int]]:
        """Shapes ([out, in]) of the matrices SWAN/SinkGD precondition, one entry per matrix."""
        h, i = self.hidden, self.intermediate
        one_layer = [(h, h)] * 4 + [(i, h), (i, h), (h, i)]
        return one_layer * self.layers


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        # CPU-sized presets for the embedded corpus (vocab = its BPE's size).
        ModelPreset("nano", 64, 176, 4, 2, 4096),
        ModelPreset("micro", 128, 352, 4, 4, 8192),
        ModelPreset("mini", 256, 688, 4, 4, 8192),
        # micro's width, 10 layers and the embedded corpus's 4096-token BPE: 3.06M parameters, 65.6% of them
        # in the hidden matrices (nano: 16%), so the matrix optimizer, not the embeddings' lr, decides.
        ModelPreset("micro-deep", 128, 352, 4, 10, 4096),
        # The GaLore configs (configs/llama_*.json).
        ModelPreset("9m", 128, 352, 4, 4, 32000),
        ModelPreset("20m", 256, 688, 4, 4, 32000),
        ModelPreset("35m", 384, 1024, 8, 6, 32000),
        ModelPreset("60m", 512, 1376, 8, 8, 32000),
        ModelPreset("130m", 768, 2048, 12, 12, 32000),
        ModelPreset("350m", 1024, 2736, 16, 24, 32000),
        ModelPreset("1b", 2048, 5461, 32, 24, 32000),
        ModelPreset("3b", 2560, 6848, 32, 32, 32000),
        ModelPreset("7b", 4096, 11008, 32, 32, 32000),
    ]
}


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; a CLI line should not
        return str(self.args[0])


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}{did_you_mean(name, PRESETS)} (known: {', '.join(PRESETS)})") from None


def llama_config(preset: ModelPreset, attn_implementation: str = "sdpa"):
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=preset.hidden,
        intermediate_size=preset.intermediate,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.heads,
        num_hidden_layers=preset.layers,
        vocab_size=preset.vocab,
        max_position_embeddings=preset.max_positions,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        tie_word_embeddings=False,
        use_cache=False,
    )
    config._attn_implementation = attn_implementation
    return config


def build_model(name: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                seed: int = 0, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """A randomly initialised LlamaForCausalLM for the preset, seeded, on `device` in `dtype`.

    The model carries `swanbench_preset = name`, so a `RunRecorder` around it records the preset's name (and
    its analytic estimate) without being told.
    """
    from transformers import LlamaForCausalLM

    preset = get_preset(name)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(preset, attn_implementation))
    model.swanbench_preset = name
    return model.to(device=device, dtype=dtype)
