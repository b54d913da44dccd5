"""Model configurations: the five named OFA sizes, the `micro` test size, and their validation.

The numbers follow spec §1.2–§1.4 (the IMT-CXR run: ofa_huge with scale_attn / scale_fc / scale_heads,
type embedding, patch layernorm and disable_entangle on). `micro` keeps every module type of the real model
but shrinks every dimension so that tests run in seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# Vocabulary of the original (spec §2): 4 specials + 50,260 dict.txt entries + <mask> + 8,192 codes + 1,000 bins.
OFA_VOCAB_SIZE = 59457
RESNET_BLOCKS = {"resnet50": (3, 4, 6), "resnet101": (3, 4, 23), "resnet152": (3, 8, 36)}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Every hyper-parameter that changes the model's shapes or math (spec §1.3 names in comments)."""

    embed_dim: int  # D (encoder_embed_dim = decoder_embed_dim)
    ffn_dim: int  # F
    encoder_layers: int
    decoder_layers: int
    heads: int  # H, head dim = D / H
    vocab_size: int = OFA_VOCAB_SIZE
    resnet_blocks: tuple[int, int, int] = (3, 8, 36)  # bottlenecks in layer1..layer3
    # Stem channels and planes of layer1 (64 in every real variant). The trunk emits 16 * width channels;
    # the original hard-wires image_proj's input to 1024 = 16 * 64.
    resnet_width: int = 64
    resnet_norm: str = (
        "batch"  # "batch" (BatchNorm2d) or "frozen" (FrozenBatchNorm2d: statistics and affine fixed)
    )
    bn_eps: float = 1e-5  # 1e-3 for sync_bn checkpoints (spec §3.1)
    max_source_positions: int = 1024
    max_target_positions: int = 1024
    token_bucket_size: int = 256
    image_bucket_size: int = 42
    attn_scale_factor: float = 2.0
    code_image_size: int = 128  # only shapes the (unused) decoder image-code path, spec §4.6
    disable_entangle: bool = True  # False: decoder adds raw position rows to token embeddings (spec §4.1)
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_drop_path_rate: float = 0.0
    decoder_drop_path_rate: float = 0.0
    resnet_drop_path_rate: float = 0.0
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        positive = ["embed_dim", "ffn_dim", "heads", "vocab_size", "resnet_width", "max_source_positions"]
        positive += ["max_target_positions", "token_bucket_size", "image_bucket_size"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name}: got {value!r}, expected a positive integer")
        for name in ("encoder_layers", "decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name}: got {value!r}, expected an integer >= 1")
        if self.embed_dim % self.heads:
            raise ValueError(
                f"ModelConfig.embed_dim: got {self.embed_dim} with heads={self.heads}, "
                "expected embed_dim divisible by heads"
            )
        if len(self.resnet_blocks) != 3 or any(int(n) < 1 for n in self.resnet_blocks):
            raise ValueError(
                f"ModelConfig.resnet_blocks: got {self.resnet_blocks!r}, expected three positive block counts"
            )
        if self.resnet_norm not in ("batch", "frozen"):
            raise ValueError(
                f"ModelConfig.resnet_norm: got {self.resnet_norm!r}, expected 'batch' or 'frozen'"
            )
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(
                    f"ModelConfig.{name}: got {getattr(self, name)!r}, expected one of {list(_DTYPES)}"
                )
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ModelConfig.{name}: got {value!r}, expected a rate in [0, 1)")
        # The tokenizer puts 4 specials first and the 1000 location bins last.
        if self.vocab_size <= 1004:
            raise ValueError(
                f"ModelConfig.vocab_size: got {self.vocab_size}, expected > 1004 (specials + bins)"
            )

    # Derived sizes ------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.heads

    @property
    def image_feature_dim(self) -> int:
        return 16 * self.resnet_width

    @property
    def text_buckets(self) -> int:  # Nt = 2 * token_bucket_size - 1
        return 2 * self.token_bucket_size - 1

    @property
    def image_buckets(self) -> int:  # Ni = (2 * image_bucket_size - 1)^2 + 3
        return (2 * self.image_bucket_size - 1) ** 2 + 3

    @property
    def image_positions(self) -> int:  # Gi = image_bucket_size^2 + 1
        return self.image_bucket_size**2 + 1

    @property
    def compute_dtype(self) -> Any:
        return _DTYPES[self.dtype]

    @property
    def parameter_dtype(self) -> Any:
        return _DTYPES[self.param_dtype]

    def replace(self, **changes: Any) -> ModelConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"ModelConfig.replace: unknown fields {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"ModelConfig: unknown fields {sorted(unknown)}")
        values = dict(values)
        if "resnet_blocks" in values:
            values["resnet_blocks"] = tuple(int(n) for n in values["resnet_blocks"])
        return cls(**values)


# The named sizes of spec §1.2, with the spec's unique parameter counts (tied embedding once, BN stats excluded).
NAMED_CONFIGS: dict[str, ModelConfig] = {
    "ofa_tiny": ModelConfig(256, 1024, 4, 4, 4, resnet_blocks=RESNET_BLOCKS["resnet50"]),
    "ofa_medium": ModelConfig(512, 2048, 4, 4, 8, resnet_blocks=RESNET_BLOCKS["resnet101"]),
    "ofa_base": ModelConfig(768, 3072, 6, 6, 12, resnet_blocks=RESNET_BLOCKS["resnet101"]),
    "ofa_large": ModelConfig(1024, 4096, 12, 12, 16, resnet_blocks=RESNET_BLOCKS["resnet152"]),
    "ofa_huge": ModelConfig(1280, 5120, 24, 12, 16, resnet_blocks=RESNET_BLOCKS["resnet152"]),
    # Tests: every module type of the real model, tiny dimensions (use with 32–64 px images).
    "micro": ModelConfig(
        32, 64, 2, 2, 2, vocab_size=1536, resnet_blocks=(1, 1, 1), resnet_width=8, max_source_positions=128,
        max_target_positions=128, token_bucket_size=16, image_bucket_size=8, code_image_size=64,
    ),
}  # fmt: skip

EXPECTED_PARAMETER_COUNTS = {
    "ofa_tiny": 33_488_336,
    "ofa_medium": 92_892_000,
    "ofa_base": 182_238_536,
    "ofa_large": 472_977_152,
    "ofa_huge": 929_486_848,
}


def get_model_config(name: str, **overrides: Any) -> ModelConfig:
    """The named configuration `name`, with `overrides` applied (e.g. dtype="bfloat16", vocab_size=...)."""
    if name not in NAMED_CONFIGS:
        raise ValueError(f"model size: got {name!r}, expected one of {sorted(NAMED_CONFIGS)}")
    return NAMED_CONFIGS[name].replace(**overrides) if overrides else NAMED_CONFIGS[name]
