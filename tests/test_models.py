"""Model registry, VMamba (shapes, init, official state-dict layout, checkpoint loading) and the timm zoo."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from vmbench.models import UnknownModelError, create_model, list_models, model_entry, resolve_model_name
from vmbench.models import registry
from vmbench.models.vmamba import (
    SS2D, VMambaConfig, _create_vmamba, convert_official_state_dict, load_weights, set_scan_backend,
)

VMBENCH_MODELS = [e.name for e in list_models(source="vmbench")]
# timm peers are checked by name (all) and built for a fast subset: a CNN and a windowed transformer (img_size).
TIMM_FAST = ["resnet50", "swin_t"]


def _finite_grads(model: torch.nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    return all(g is not None and torch.isfinite(g).all() for g in grads)


# --------------------------------------------------------------------------- registry
def test_registry_tables_are_consistent():
    entries = list_models()
    names = [e.name for e in entries]
    assert len(names) == len(set(names))
    assert {"vmamba_t", "vmamba_s", "vmamba_b", "swin_t", "convnext_t", "res2net50", "deit_s",
            "regnety_4g", "resnet50"} <= set(names)
    for e in entries:
        assert e.source in ("vmbench", "timm")
        assert (e.timm_name is None) == (e.source == "vmbench")
    # Every vmbench entry has exactly one registered builder and vice versa.
    assert set(registry._BUILDERS) == {e.name for e in entries if e.source == "vmbench"}
    json.dumps([e.to_dict() for e in entries])  # what `vmbench models --json` prints


def test_every_timm_peer_name_exists_in_timm():
    import timm

    for e in list_models(source="timm"):
        assert timm.is_model(e.timm_name), e


def test_registry_imports_without_torch():
    code = ("import sys, vmbench.models as m, vmbench.models.registry as r; "
            "assert m.resolve_model_name('VMamba-Tiny') == 'vmamba_t'; "
            "assert [e.family for e in m.list_models()][0] == 'vmamba'; "
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_aliases_and_timm_names():
    assert resolve_model_name("vmamba_tiny_s1l8") == "vmamba_t"
    assert resolve_model_name("VMamba-Small") == "vmamba_s"
    assert resolve_model_name("vanilla_vmamba_base") == "vanilla_vmamba_b"
    assert resolve_model_name("swin_tiny_patch4_window7_224") == "swin_t"
    assert resolve_model_name("res2net50_26w_4s") == "res2net50"
    assert resolve_model_name("regnety_040") == "regnety_4g"
    # Any other timm model is accepted as is.
    assert resolve_model_name("resnet18") == "resnet18"
    e = model_entry("resnet18")
    assert (e.source, e.timm_name, e.family) == ("timm", "resnet18", "timm")


def test_unknown_model_error_suggests():
    with pytest.raises(UnknownModelError) as ei:
        create_model("vmamba_tny")
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert "\n" not in msg and "vmamba_t" in msg and "did you mean" in msg
    with pytest.raises(UnknownModelError):
        resolve_model_name("definitely_not_a_model_xyz")


def test_duplicate_registration_is_an_error():
    def vmamba_t(**kw):  # same name as a registered variant, different function
        raise AssertionError

    with pytest.raises(ValueError, match="duplicate"):
        registry.register_model(vmamba_t)

    def no_such_variant(**kw):
        raise AssertionError

    with pytest.raises(ValueError, match="no vmbench metadata"):
        registry.register_model(no_such_variant)
    with pytest.raises(ValueError, match="duplicate"):
        registry._add_entry(registry.ModelEntry("vmamba_t", "vmamba", "vmbench", "again"))
    with pytest.raises(ValueError, match="collides"):
        registry._add_entry(registry.ModelEntry("new_model", "vmamba", "vmbench", "x", aliases=("vmamba_tiny",)))


def test_create_model_argument_errors():
    with pytest.raises(ValueError, match="scan_backend"):
        create_model("vmamba_t", scan_backend="cuda")
    with pytest.raises(ValueError, match="unknown VMamba option"):
        create_model("vmamba_t", not_an_option=1)
    with pytest.raises(ValueError, match="same length"):
        VMambaConfig(dims=(32, 64), depths=(1, 1, 1))
    with pytest.raises(ValueError, match="stem"):
        VMambaConfig(stem="v9")
    with pytest.raises(ValueError, match="global_pool"):
        VMambaConfig(global_pool="max")
    with pytest.raises(ValueError, match="drop_rate"):
        VMambaConfig(drop_rate=1.0)


def test_vmbench_create_model_has_timm_head_options():
    # The head options timm passes (global_pool, drop_rate) work through vmbench's registry as well.
    torch.manual_seed(0)
    model = create_model("vmamba_t", num_classes=0, scan_backend="torch", depths=(1, 1, 1, 1), dims=16,
                         global_pool="", drop_rate=0.1).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 32))
    assert out.shape == (1, 2, 1, 128)  # unpooled NHWC features after the classifier norm
    assert model.classifier.drop.p == 0.1 and model.get_classifier().__class__ is torch.nn.Identity


# --------------------------------------------------------------------------- VMamba forward / backward
def _fwd_bwd(model, batch=2, res=32, classes=10):
    y = model(torch.randn(batch, 3, res, res))
    assert y.shape == (batch, classes) and torch.isfinite(y).all()
    y.float().pow(2).mean().backward()
    assert _finite_grads(model)


@pytest.mark.parametrize("name", VMBENCH_MODELS)
def test_vmamba_variant_forward_backward(name):
    # Every registered variant through its own builder, one block per stage to stay fast on a CPU;
    # full-depth layouts are checked by the parameter / FLOP counts (test_flops.py) and below.
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, scan_backend="torch", depths=(1, 1, 1, 1))
    assert model.scan_backend == "torch"
    _fwd_bwd(model)


def test_vmamba_t_full_depth_forward_backward():
    torch.manual_seed(0)
    model = create_model("vmamba_t", num_classes=10, scan_backend="torch")
    assert [len(layer.blocks) for layer in model.layers] == [2, 2, 8, 2]
    _fwd_bwd(model, batch=1)


TINY = {
    "v05": dict(dims=16, depths=(1, 2), d_state=2, ssm_ratio=1.5, dt_rank=3),
    "v0": dict(dims=16, depths=(1, 1, 1), d_state=4, ssm_ratio=2.0, conv_bias=True, z_branch=True,
               mlp_ratio=0.0, stem="v1", downsample="v1"),
    "v05_mlp2_d5": dict(dims=(8, 24), depths=(2, 1), d_conv=5, mlp_ratio=2.0, drop_path_rate=0.5),
}


@pytest.mark.parametrize("kind", sorted(TINY))
def test_tiny_configs_odd_sizes(kind):
    torch.manual_seed(0)
    model = _create_vmamba(TINY[kind], num_classes=7, scan_backend="torch")
    x = torch.randn(2, 3, 44, 36)  # maps 11x9 -> odd sizes in every downsample
    feats = model.forward_features(x)
    n = len(model.cfg.depths)
    h, w = 11, 9
    for _ in range(n - 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    assert feats.shape == (2, h, w, model.cfg.dims[-1])
    y = model(x)
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    y.sum().backward()
    assert _finite_grads(model)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval is deterministic (no drop path)


def test_channels_last_end_to_end():
    model = _create_vmamba(TINY["v05"], num_classes=3, scan_backend="torch").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        stem = model.patch_embed(x.contiguous(memory_format=torch.channels_last))
        assert stem.is_contiguous()  # (B, H, W, C) without a copy
        out = model.layers[0].blocks(stem)
    assert out.shape == (1, 8, 8, 16) and out.is_contiguous()


@pytest.mark.parametrize("kind", ["v05", "v0"])
def test_dynamo_fullgraph(kind):
    # No graph breaks (fullgraph=True) through stem, SS2D, scan op, downsample and head; "eager"
    # backend: dynamo's capture only, no compiler, so this stays cheap on a CPU.
    torch.manual_seed(0)
    model = _create_vmamba(TINY[kind], num_classes=5, scan_backend="torch")
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    compiled(x).sum().backward()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-6)


def test_init_matches_official_scheme():
    torch.manual_seed(0)
    model = _create_vmamba(dict(dims=32, depths=(1, 1), d_state=4), num_classes=5)
    op = model.layers[0].blocks[0].op
    assert torch.equal(op.A_logs, torch.log(torch.arange(1, 5.0)).expand(4 * 32, 4))
    assert torch.equal(op.Ds, torch.ones(4 * 32))
    dt = torch.nn.functional.softplus(op.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert op.dt_projs_weight.abs().max() <= op.dt_rank ** -0.5
    assert op.x_proj_weight.abs().max() <= op.d_inner ** -0.5
    assert op.A_logs._no_weight_decay and op.Ds._no_weight_decay
    assert "layers.0.blocks.0.op.A_logs" in model.no_weight_decay()
    assert torch.equal(model.classifier.head.bias, torch.zeros(5))
    assert torch.equal(model.layers[0].blocks[0].norm.weight, torch.ones(32))
    assert 0.01 < model.layers[0].blocks[0].mlp.fc1.weight.std() < 0.03  # trunc_normal(0.02)


def test_set_scan_backend():
    model = _create_vmamba(TINY["v05"], num_classes=3)
    assert model.scan_backend == "auto"
    set_scan_backend(model, "torch")
    assert {m.scan_backend for m in model.modules() if isinstance(m, SS2D)} == {"torch"}
    with pytest.raises(ValueError, match="scan backend"):
        set_scan_backend(model, "cuda")
    with pytest.raises(ValueError, match="no SS2D"):
        set_scan_backend(torch.nn.Linear(2, 2), "torch")


# --------------------------------------------------------------------------- official state-dict layout
def _official_keys_vmamba_t() -> dict[str, tuple[int, ...]]:
    """Hand-written from the official release (vmamba_tiny_s1l8): stem, stage-0 block 0, downsample, head."""
    block = {
        "norm.weight": (96,), "norm.bias": (96,),
        "op.in_proj.weight": (96, 96),
        "op.conv2d.weight": (96, 1, 3, 3),
        "op.x_proj_weight": (4, 6 + 2 * 1, 96),
        "op.dt_projs_weight": (4, 96, 6), "op.dt_projs_bias": (4, 96),
        "op.A_logs": (384, 1), "op.Ds": (384,),
        "op.out_norm.weight": (96,), "op.out_norm.bias": (96,),
        "op.out_proj.weight": (96, 96),
        "norm2.weight": (96,), "norm2.bias": (96,),
        "mlp.fc1.weight": (384, 96), "mlp.fc1.bias": (384,),
        "mlp.fc2.weight": (96, 384), "mlp.fc2.bias": (96,),
    }
    keys = {f"layers.0.blocks.0.{k}": v for k, v in block.items()}
    keys.update({
        "patch_embed.0.weight": (48, 3, 3, 3), "patch_embed.0.bias": (48,),
        "patch_embed.2.weight": (48,), "patch_embed.2.bias": (48,),
        "patch_embed.5.weight": (96, 48, 3, 3), "patch_embed.5.bias": (96,),
        "patch_embed.7.weight": (96,), "patch_embed.7.bias": (96,),
        "layers.0.downsample.1.weight": (192, 96, 3, 3), "layers.0.downsample.1.bias": (192,),
        "layers.0.downsample.3.weight": (192,), "layers.0.downsample.3.bias": (192,),
        "classifier.norm.weight": (768,), "classifier.norm.bias": (768,),
        "classifier.head.weight": (1000, 768), "classifier.head.bias": (1000,),
    })
    return keys


def test_state_dict_matches_official_layout_vmamba_t():
    with torch.device("meta"):
        sd = create_model("vmamba_t").state_dict()
    expected = _official_keys_vmamba_t()
    got = {k: tuple(v.shape) for k, v in sd.items()
           if k.startswith(("patch_embed.", "layers.0.blocks.0.", "layers.0.downsample.", "classifier."))}
    assert got == expected
    # The other blocks repeat the block layout; the last stage has no downsample.
    per_block = 18
    assert len(sd) == len(expected) - per_block + per_block * 14 + 4 * 2
    assert not any(k.startswith("layers.3.downsample") for k in sd)
    assert {k.split(".")[3] for k in sd if k.startswith("layers.2.blocks.")} == {str(i) for i in range(8)}


def test_state_dict_layout_vanilla():
    with torch.device("meta"):
        sd = create_model("vanilla_vmamba_t").state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["patch_embed.0.weight"] == (96, 3, 4, 4) and shapes["patch_embed.2.weight"] == (96,)
    assert shapes["layers.0.blocks.0.op.in_proj.weight"] == (384, 96)  # x and z halves
    assert shapes["layers.0.blocks.0.op.conv2d.bias"] == (192,)
    assert shapes["layers.0.blocks.0.op.A_logs"] == (768, 16)
    assert shapes["layers.0.downsample.norm.weight"] == (384,)
    assert shapes["layers.0.downsample.reduction.weight"] == (192, 384)
    assert not any(".norm2." in k or ".mlp." in k for k in sd)


# --------------------------------------------------------------------------- checkpoints
def _pair(cfg):
    torch.manual_seed(1)
    a = _create_vmamba(cfg, num_classes=6)
    torch.manual_seed(2)
    b = _create_vmamba(cfg, num_classes=6)
    return a, b


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", ["bare", "model"])
def test_load_weights_roundtrip(tmp_path, wrap):
    a, b = _pair(TINY["v05"])
    assert not _same(a, b)
    sd = a.state_dict()
    torch.save(sd if wrap == "bare" else {"model": sd, "epoch": 3}, tmp_path / "w.pth")
    assert load_weights(b, tmp_path / "w.pth") is b
    assert _same(a, b)


def _to_legacy(sd: dict) -> dict:
    """Official-loader legacy names + 1x1 projection weights stored as (out, in, 1, 1) convs."""
    out = {}
    for k, v in sd.items():
        k2 = (k.replace("patch_embed.0.", "patch_embed.proj.").replace("patch_embed.2.", "patch_embed.norm.")
              .replace(".op.", ".self_attention."))
        if ".blocks." in k2:
            k2 = k2.replace(".norm.", ".ln_1.")
        k2 = k2.replace("classifier.norm.", "norm.").replace("classifier.head.", "head.")
        if k2.endswith(("in_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight", "reduction.weight")):
            v = v[:, :, None, None]
        out[k2] = v
    return out


@pytest.mark.parametrize("kind", ["v0", "v05"])
def test_load_weights_legacy_names_and_conv_shaped_1x1(tmp_path, kind):
    a, b = _pair(TINY[kind])
    legacy = _to_legacy(a.state_dict())
    assert "head.weight" in legacy and any(".ln_1." in k for k in legacy)
    assert any(v.dim() == 4 and k.endswith("in_proj.weight") for k, v in legacy.items())
    torch.save({"model": legacy}, tmp_path / "legacy.pth")
    load_weights(b, tmp_path / "legacy.pth")
    assert _same(a, b)
    # Plain load_state_dict understands the official layout too (pre-hook), and so does the converter.
    c = _create_vmamba(TINY[kind], num_classes=6)
    c.load_state_dict(legacy, strict=True)
    assert _same(a, c)
    assert convert_official_state_dict(c, legacy).keys() == a.state_dict().keys()


def test_load_weights_strict_mismatch(tmp_path):
    a, b = _pair(TINY["v05"])
    sd = dict(a.state_dict())
    sd.pop("layers.0.blocks.0.op.Ds")
    sd["layers.0.blocks.0.op.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as ei:
        load_weights(b, tmp_path / "bad.pth")
    msg = str(ei.value)
    assert "missing" in msg and "layers.0.blocks.0.op.Ds" in msg
    assert "unexpected" in msg and "layers.0.blocks.0.op.extra" in msg

    other = _create_vmamba(TINY["v05"], num_classes=9)  # head shape differs
    torch.save(a.state_dict(), tmp_path / "ok.pth")
    with pytest.raises(ValueError, match="classifier.head.weight: file"):
        load_weights(other, tmp_path / "ok.pth")

    torch.save({"model": {"a": 1}}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="expected a state dict"):
        load_weights(b, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="not found"):
        load_weights(b, tmp_path / "missing.pth")


# --------------------------------------------------------------------------- timm zoo
@pytest.mark.parametrize("name", TIMM_FAST)
def test_timm_peer_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=32, scan_backend="triton")  # backend ignored for timm
    y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.sum().backward()
    assert _finite_grads(model)


def test_timm_never_pretrained():
    with pytest.raises(ValueError, match="random init"):
        create_model("resnet18", pretrained=True)


@pytest.mark.parametrize("kind", ["v05", "v0"])
def test_kept_autocast_casts_equal_autocast(kind):
    """VMamba's Linear / Conv2d keep their autocast-dtype weights between calls that need no gradient (a plain
    no_grad call under autocast costs no cast kernels): outputs equal autocast's own casts bit for bit; the kept
    casts are rebuilt after an optimizer step (a fused one moves no version counter) and dropped at a train() /
    eval() switch and by deepcopy; with gradients nothing is kept."""
    import copy

    from vmbench.models.vmamba import Conv2d, Linear

    torch.manual_seed(0)
    model = _create_vmamba(TINY[kind], num_classes=5, scan_backend="torch").eval()
    x = torch.randn(2, 3, 32, 32)
    kept = [m for m in model.modules() if isinstance(m, (Linear, Conv2d))]
    assert kept and all(not m._casts for m in kept)

    def with_grad():  # parameters need a gradient: autocast casts them itself, nothing kept
        with torch.autocast("cpu", torch.bfloat16):
            return model(x).detach()

    def plain():
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            return model(x)

    ref = with_grad()
    assert all(not m._casts for m in kept)
    y = plain()
    assert torch.equal(y, ref) and all(m._casts for m in kept)
    assert torch.equal(plain(), ref)
    model.train()  # a mode switch drops them
    assert all(not m._casts for m in kept)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    model.eval()
    plain()
    with torch.autocast("cpu", torch.bfloat16):
        model(x).float().square().mean().backward()
    opt.step()  # no version moves, the step hook does
    y2 = plain()
    assert torch.equal(y2, with_grad()) and not torch.equal(y2, y)
    assert all(not m._casts for m in copy.deepcopy(model).modules() if isinstance(m, (Linear, Conv2d)))
    with torch.no_grad():
        model(x)  # no autocast: the base classes' forward


def test_graph_replay_bookkeeping_on_the_cpu():
    """VMamba's CUDA-graph replays (tests/test_graph_replay_gpu.py on a GPU): CPU calls stay eager, copies start
    without graphs, and every change VSSM makes or sees drops the graphs it holds."""
    import copy
    import io

    from vmbench.models.vmamba import set_scan_backend, vmamba_t

    model = vmamba_t(num_classes=10, depths=(1, 1, 1, 1), dims=48).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for _ in range(3):
            model(x)
    assert len(model.graph_replay.graphs) == 0  # not CUDA: eager
    drops = {
        "train()": lambda m: m.train(),
        "eval()": lambda m: m.eval(),
        ".to()": lambda m: m.to(torch.float64),
        "load_state_dict": lambda m: m.load_state_dict(m.state_dict()),
        "reset_classifier": lambda m: m.reset_classifier(5),
        "set_scan_backend": lambda m: set_scan_backend(m, "torch"),
    }
    for what, change in drops.items():
        model.graph_replay.graphs["recorded"] = object()
        change(model)
        assert not model.graph_replay.graphs, what
    model.graph_replay.graphs["recorded"] = object()
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for other in (copy.deepcopy(model), torch.load(buf, weights_only=False)):
        assert other.graph_replay is not model.graph_replay and not other.graph_replay.graphs
    model.graph_replay.graphs.clear()


def test_replayed_backward_returns_gradients_of_its_own():
    """The training replay's backward hands autograd copies of the recorded gradient buffers: a caller that keeps
    torch.autograd.grad's result across steps is not changed by the next replay. (The CUDA graphs themselves are
    tested on a GPU, tests/test_graph_replay_gpu.py; here stand-ins record nothing and replay nothing.)"""
    from types import SimpleNamespace

    from vmbench.models.graph_replay import _Replayed

    w = torch.nn.Parameter(torch.randn(3))
    buffers = [torch.full((3,), 2.0), None]
    graph = SimpleNamespace(x=torch.zeros(2), y=torch.ones(2), gy=torch.zeros(2), grads=buffers,
                            fwd=SimpleNamespace(replay=lambda: None), bwd=SimpleNamespace(replay=lambda: None),
                            release=lambda: None)
    out = _Replayed.apply(graph, torch.ones(2), w, torch.nn.Parameter(torch.randn(1)))
    (g,) = torch.autograd.grad(out.sum(), [w])
    assert torch.equal(g, buffers[0]) and g.data_ptr() != buffers[0].data_ptr()
    buffers[0].fill_(5.0)  # what the next replay would do
    assert torch.equal(g, torch.full((3,), 2.0))


def _saved_bytes(fn, *args):
    """(fn(*args), the bytes autograd saved for its backward)."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fn(*args)
    return y, sum(t.numel() * t.element_size() for t in saved)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
@pytest.mark.parametrize("amp", [False, True])
def test_gelu_linear_matches_plain_ops_and_saves_less(amp, device):
    """The MLP's GELU -> fc2 with gradients: the same output and gradients as the plain ops (autocast's casts
    included, gradients in the parameters' dtypes) while autograd keeps h and the weight, not gelu(h) too."""
    import contextlib

    from vmbench.models.vmamba_layers import Mlp, gelu_linear, gelu_linear_ref

    torch.manual_seed(0)
    dtype = torch.bfloat16 if amp else torch.float32
    h = torch.randn(2, 3, 5, 16, dtype=dtype, device=device, requires_grad=True)  # fc1's output: autocast's dtype
    w = torch.randn(8, 16, device=device, requires_grad=True)
    b = torch.randn(8, device=device, requires_grad=True)
    gy = torch.randn(2, 3, 5, 8, dtype=dtype, device=device)

    def run(fn):
        with torch.autocast(device, torch.bfloat16) if amp else contextlib.nullcontext():
            y, saved = _saved_bytes(fn, h, w, b)
        return y, torch.autograd.grad(y, (h, w, b), gy), saved

    y, grads, saved = run(gelu_linear)
    y_ref, grads_ref, saved_ref = run(gelu_linear_ref)
    assert y.dtype == y_ref.dtype == dtype and torch.equal(y, y_ref)
    for g, g_ref, leaf in zip(grads, grads_ref, (h, w, b)):
        assert g.dtype == g_ref.dtype == leaf.dtype
        torch.testing.assert_close(g, g_ref, rtol=1e-2 if amp else 1e-5, atol=1e-2 if amp else 1e-5)
    assert saved == saved_ref - h.numel() * h.element_size()  # gelu(h) is not kept

    mlp = Mlp(16, 32).to(device)  # the module takes that path only with gradients and no dropout
    x = torch.randn(4, 16, device=device)
    with torch.no_grad():
        assert torch.equal(mlp(x), mlp.fc2(mlp.act(mlp.fc1(x))))
    y = mlp(x)
    assert type(y.grad_fn).__name__ == "_GeluLinearBackward"
    y.square().sum().backward()
    got = [p.grad.clone() for p in mlp.parameters()]
    mlp.zero_grad()
    mlp.fc2(mlp.act(mlp.fc1(x))).square().sum().backward()
    for g, p in zip(got, mlp.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_compiled_training_saves_one_hidden_activation_per_mlp(monkeypatch):
    """A whole (tiny) VMamba compiled for training under autocast, AOTAutograd with Inductor's decompositions and
    min-cut partitioner: in the joint graph the backward's recomputed GELU would merge with the forward's, and the
    partitioner then saved the GELU's output beside fc1's (measured: one hidden-size bf16 activation per position
    more than needed). `_GeluLinear`'s compiled forward runs its GELU as an op of its own (vmbench::gelu): the
    compiled forward saves exactly those bytes less, and less than eager saves."""
    from vmbench.models import opaque_ops
    from vmbench.models import vmamba_layers as L
    from vmbench.models.vmamba import _create_vmamba

    torch.manual_seed(0)
    model = _create_vmamba(dict(dims=16, depths=(1, 1, 1, 1)), num_classes=10, scan_backend="torch",
                           drop_path_rate=0.1).train()
    x = torch.randn(2, 3, 64, 64)
    hidden = []
    hooks = [m.fc1.register_forward_hook(lambda mod, i, out: hidden.append(out.numel() * out.element_size()))
             for m in model.modules() if isinstance(m, L.Mlp)]
    compiled = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, eager = _saved_bytes(model, x)
        for hook in hooks:
            hook.remove()
        for name, use_op in (("op", True), ("aten", False)):
            monkeypatch.setattr(opaque_ops, "USE_GELU_OP", use_op)
            torch._dynamo.reset()
            y, compiled[name] = _saved_bytes(torch.compile(model, backend="aot_eager_decomp_partition",
                                                           fullgraph=True), x)
            y.float().sum().backward()
    assert len(hidden) == 4 and compiled["aten"] - compiled["op"] == sum(hidden), (compiled, hidden)
    assert compiled["op"] <= eager, (compiled, eager)


def test_compiled_mlp_saves_what_eager_saves():
    """Compiled, the MLP still goes through gelu_linear (one graph, no break): AOTAutograd's partitioner would keep
    the GELU's output as well as fc1's (benchmarks/NOTES-compile.md); the compiled step keeps what eager keeps."""
    from vmbench.models.vmamba_layers import Mlp

    torch.manual_seed(0)
    mlp = Mlp(16, 64)
    x = torch.randn(2, 5, 5, 16, requires_grad=True)

    y, eager = _saved_bytes(mlp, x)
    torch._dynamo.reset()
    y_c, compiled = _saved_bytes(torch.compile(mlp, backend="aot_eager_decomp_partition", fullgraph=True), x)
    _, plain = _saved_bytes(torch.compile(lambda t: mlp.fc2(mlp.act(mlp.fc1(t))), backend="aot_eager_decomp_partition",
                                          fullgraph=True), x)
    assert compiled == eager == plain - 2 * 5 * 5 * 64 * 4  # fc1's output kept, the GELU's (fp32) not
    torch.testing.assert_close(y_c, y)
    g = torch.randn_like(y)
    leaves = [x, *mlp.parameters()]
    for a, b in zip(torch.autograd.grad(y_c, leaves, g), torch.autograd.grad(y, leaves, g)):
        torch.testing.assert_close(a, b)
