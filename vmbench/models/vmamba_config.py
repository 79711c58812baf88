"""VMamba's configuration: `VMambaConfig`, one frozen dataclass of every field that shapes a model.

Defaults are VMamba-T [s1l8] ("v05_noz": d_state 1, no gate, MLP, two-conv stem "v2", conv downsampling "v3");
Vanilla VMamba ("v0") sets d_state 16, ssm_ratio 2, the SiLU z-branch, no MLP, stem "v1", patch merging "v1".
`__post_init__` normalises dims / depths and raises ValueError on a bad field.
"""
from __future__ import annotations

from dataclasses import dataclass

from .registry import SCAN_BACKENDS

__all__ = ["VMambaConfig", "GLOBAL_POOLS"]

GLOBAL_POOLS = ("avg", "")  # "avg": mean over H, W; "": no pooling


@dataclass(frozen=True)
class VMambaConfig:
    """Everything that shapes a VMamba model. Defaults are VMamba-T [s1l8]."""

    dims: int | tuple[int, ...] = 96  # int: stage i gets dims * 2**i
    depths: tuple[int, ...] = (2, 2, 8, 2)
    d_state: int = 1
    ssm_ratio: float = 1.0  # d_inner = ssm_ratio * dim
    dt_rank: int | str = "auto"  # "auto": ceil(dim / 16)
    d_conv: int = 3  # depthwise conv kernel inside SS2D
    conv_bias: bool = False
    z_branch: bool = False  # v0: y * SiLU(z) gate from a second in_proj half
    mlp_ratio: float = 4.0  # 0: no MLP sub-block (v0)
    stem: str = "v2"  # "v1": 4x4/4 conv + LN; "v2": 3x3/2 conv, LN, GELU, 3x3/2 conv, LN
    downsample: str = "v3"  # "v1": patch merging (LN + Linear 4C->2C); "v3": 3x3/2 conv + LN
    drop_path_rate: float = 0.2
    ssm_drop_rate: float = 0.0
    mlp_drop_rate: float = 0.0
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "avg"  # "avg": mean over H, W; "": no pooling (forward returns (B, H, W, C))
    drop_rate: float = 0.0  # dropout before the classifier's Linear (timm's `drop_rate`)
    scan_backend: str = "auto"

    def __post_init__(self):
        dims = self.dims
        if isinstance(dims, int):
            dims = tuple(dims * 2**i for i in range(len(self.depths)))
        object.__setattr__(self, "dims", tuple(int(d) for d in dims))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        if not self.depths or any(d < 1 for d in self.depths):
            raise ValueError(f"depths must be a non-empty list of positive ints, got {self.depths}")
        if len(self.dims) != len(self.depths):
            raise ValueError(f"dims {self.dims} and depths {self.depths} must have the same length")
        if any(d < 1 for d in self.dims):
            raise ValueError(f"dims must be positive, got {self.dims}")
        if self.d_state < 1:
            raise ValueError(f"d_state must be >= 1, got {self.d_state}")
        if self.ssm_ratio <= 0:
            raise ValueError(f"ssm_ratio must be > 0, got {self.ssm_ratio}")
        if not (self.dt_rank == "auto" or (isinstance(self.dt_rank, int) and self.dt_rank >= 1)):
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got {self.dt_rank!r}")
        if self.d_conv < 1 or self.d_conv % 2 == 0:
            raise ValueError(f"d_conv must be a positive odd int, got {self.d_conv}")
        if self.mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0, got {self.mlp_ratio}")
        if self.stem not in ("v1", "v2"):
            raise ValueError(f"stem must be 'v1' or 'v2', got {self.stem!r}")
        if self.stem == "v2" and self.dims[0] % 2:
            raise ValueError(f"stem 'v2' halves dims[0] in its first conv; dims[0]={self.dims[0]} must be even")
        if self.downsample not in ("v1", "v3"):
            raise ValueError(f"downsample must be 'v1' or 'v3', got {self.downsample!r}")
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be 'avg' or '' (none), got {self.global_pool!r}")
        for name in ("drop_path_rate", "ssm_drop_rate", "mlp_drop_rate", "drop_rate"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if self.scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"scan_backend must be one of {', '.join(SCAN_BACKENDS)}; got {self.scan_backend!r}")
        if self.in_chans < 1 or self.num_classes < 0:
            raise ValueError(f"in_chans must be >= 1 and num_classes >= 0; got {self.in_chans}, {self.num_classes}")
