"""VMamba through timm's public API: registration, timm's generic model contract, features, weights files.

What timm's own test-suite checks of every timm model (forward, backward, default-cfg keys, reset_classifier,
forward_head(pre_logits), features_only / forward_intermediates shapes, grad checkpointing), written against
`timm.create_model` for vmbench's variants: each variant at one block per stage (cheap on a CPU), the full
layouts on the meta device.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest
import torch

import vmbench.models  # registers the VMamba variants in timm (when timm is imported, below)
import timm
from timm.data import resolve_data_config
from test_models import _to_legacy  # official-release layout of a state dict
from vmbench.models import list_models

NAMES = [e.name for e in list_models(source="vmbench")]
TINY = dict(depths=(1, 1, 1, 1), scan_backend="torch")  # every variant, one block per stage
SMALL = dict(dims=16, depths=(1, 1, 1, 1), scan_backend="torch")  # smaller still: weights files, compile


def _create(name, **kw):
    return timm.create_model(name, **{**TINY, **kw})


def _dims(model) -> list[int]:
    return list(model.cfg.dims)


def _stage_sizes(name: str, h: int, w: int) -> list[tuple[int, int]]:
    """Stage maps: VMamba's two stride-2 3x3 stem convs give ceil(H/4); Vanilla's 4x4/4 patchify floor(H/4);
    each downsample after that ceil(/2)."""
    if name.startswith("vanilla"):
        h, w = h // 4, w // 4
    else:
        h, w = math.ceil(h / 4), math.ceil(w / 4)
    out = [(h, w)]
    for _ in range(3):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        out.append((h, w))
    return out


# --------------------------------------------------------------------------- registration
def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_registered_whichever_is_imported_first():
    # (`import vmbench.models` alone imports neither torch nor timm: test_models.py checks that.)
    names = repr(NAMES)
    # timm first: registered by `import vmbench.models` at once.
    _run(f"import timm, vmbench.models; assert set({names}) <= set(timm.list_models()), timm.list_models('*mamba*')")
    # vmbench.models first, and timm then imported by vmbench's own create_model (vmamba.py imports timm.layers,
    # so the hook registers while vmamba.py is half-imported): registered, and timm builds the same class.
    _run("import sys, vmbench.models as m; assert 'timm' not in sys.modules; "
         "v = m.create_model('vanilla_vmamba_t', depths=(1, 1, 1, 1)); import timm; "
         f"assert set({names}) <= set(timm.list_models()); "
         "t = timm.create_model('vanilla_vmamba_t', depths=(1, 1, 1, 1)); assert type(t) is type(v)")


# --------------------------------------------------------------------------- default cfg, full layouts (meta)
@pytest.mark.parametrize("name", NAMES)
def test_default_cfg_and_model_attributes(name):
    with torch.device("meta"):
        model = timm.create_model(name)
        ours = vmbench.models.create_model(name)
    # One definition per variant: timm's entry point builds vmbench's architecture.
    assert type(model) is type(ours) and model.cfg == ours.cfg
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in ours.state_dict().items()]
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg and cfg["architecture"] == name
    for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes", "first_conv",
                "classifier", "pool_size"):
        assert key in cfg, key
    assert (cfg["input_size"], cfg["pool_size"], cfg["num_classes"]) == ((3, 224, 224), (7, 7), 1000)
    assert (cfg["crop_pct"], cfg["interpolation"]) == (0.875, "bicubic")
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    sd = model.state_dict()
    assert cfg["first_conv"] + ".weight" in sd and sd[cfg["first_conv"] + ".weight"].shape[1] == 3
    assert tuple(sd[cfg["classifier"] + ".weight"].shape) == (1000, model.num_features)
    assert model.num_classes == 1000 and model.num_features == model.head_hidden_size == _dims(model)[-1]
    data = resolve_data_config({}, model=model)
    assert data["input_size"] == (3, 224, 224) and data["crop_pct"] == 0.875
    # feature_info: stage i has dims[i] channels at stride 4 * 2**i.
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    assert info.channels() == _dims(model) and info.reduction() == [4, 8, 16, 32]
    # no_weight_decay names real parameters: every A_logs and Ds (2-D A_logs would otherwise be decayed).
    params = dict(model.named_parameters())
    nwd = model.no_weight_decay()
    assert nwd <= params.keys()
    assert nwd == {n for n in params if n.endswith((".A_logs", ".Ds"))} and len(nwd) == 2 * sum(model.cfg.depths)


@pytest.mark.parametrize("name", ["vmamba_t", "vanilla_vmamba_s"])
def test_group_matcher_orders_parameters_by_depth(name):
    from timm.models import group_parameters

    with torch.device("meta"):
        model = timm.create_model(name)
    depths = model.cfg.depths
    fine = group_parameters(model, model.group_matcher(coarse=False))  # {layer id: [names]}, head last
    order = {n: i for i, names in fine.items() for n in names}
    assert set(order) == {n for n, _ in model.named_parameters()}
    # stem, every block, the 3 downsamples, then the unmatched head; the classifier norm joins the last block
    # (timm's suffix 99999: "same group as the previous one")
    assert len(fine) == 1 + sum(depths) + (len(depths) - 1) + 1
    assert order["patch_embed.0.weight"] == 0 and order["classifier.head.weight"] == len(fine) - 1
    assert order["layers.0.blocks.1.op.in_proj.weight"] < order["layers.0.downsample." + (
        "1.weight" if model.cfg.downsample == "v3" else "reduction.weight")] < order["layers.1.blocks.0.norm.weight"]
    assert order["layers.3.blocks.1.norm.weight"] == order["classifier.norm.weight"] < order["classifier.head.weight"]
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 1 + len(depths) + 1  # stem, 4 stages, the rest


def test_layer_decay_and_no_weight_decay_in_timm_optimizer():
    from timm.optim import create_optimizer_v2

    model = _create("vmamba_t")
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scale = {}
    for g in opt.param_groups:
        for p in g["params"]:
            scale[p] = (g["lr_scale"], g["weight_decay"])
    named = dict(model.named_parameters())
    assert scale[named["patch_embed.0.weight"]][0] < scale[named["layers.2.blocks.0.op.in_proj.weight"]][0] \
        < scale[named["classifier.head.weight"]][0] == 1.0
    assert scale[named["layers.1.blocks.0.op.A_logs"]][1] == 0.0  # 2-D, excluded by no_weight_decay
    assert scale[named["layers.1.blocks.0.op.in_proj.weight"]][1] == 0.05


# --------------------------------------------------------------------------- timm's forward / backward contract
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_stage_shapes(name):
    # timm's test_model_backward: a gradient for every parameter, at an odd non-square size; and the stage
    # outputs features_only returns (forward_intermediates: NCHW, dims[i] channels, the stem's rounding).
    torch.manual_seed(0)
    model = _create(name, num_classes=42).train()
    x = torch.randn(2, 3, 37, 29)
    y = model(x)
    assert y.shape == (2, 42) and torch.isfinite(y).all()
    y.mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    with torch.no_grad():
        stages = model.eval().forward_intermediates(x, intermediates_only=True)
    assert [tuple(t.shape) for t in stages] == [(2, c, *s) for c, s in zip(_dims(model), _stage_sizes(name, 37, 29))]


def _saved_bytes(model, x) -> tuple[torch.Tensor, int]:
    """Forward under a saved-tensors hook: bytes autograd keeps for backward outside checkpointed regions (a
    checkpointed block keeps only its input, counted by a pre-hook), and the output."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    def block_input(module, args):
        nonlocal total
        if model.grad_checkpointing:
            total += args[0].numel() * args[0].element_size()

    hooks = [m.register_forward_pre_hook(block_input) for layer in model.layers for m in layer.blocks]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    for h in hooks:
        h.remove()
    return out, total


def test_grad_checkpointing_same_gradients_less_saved_activation_memory():
    # Drop path and dropout on: the checkpoint replays the RNG, so the recomputed masks (and the gradients) are
    # exactly the eager ones.
    torch.manual_seed(0)
    model = timm.create_model("vmamba_t", dims=16, depths=(2, 2, 3, 2), scan_backend="torch", num_classes=5,
                              drop_path_rate=0.5, ssm_drop_rate=0.2, mlp_drop_rate=0.2).train()
    x = torch.randn(2, 3, 64, 48)
    grads, saved = [], []
    for ckpt in (False, True):
        model.set_grad_checkpointing(ckpt)
        model.zero_grad()
        torch.manual_seed(1)
        out, nbytes = _saved_bytes(model, x)
        out.square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        saved.append(nbytes)
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.equal(grads[0][n], grads[1][n]), n
    assert saved[1] < saved[0] / 4, saved  # measured here: 6.31 MB -> 0.93 MB
    model.eval()  # timm's test_model_forward: the same output with checkpointing on (inference runs it plain)
    with torch.no_grad():
        ref = model(x)
        model.set_grad_checkpointing(False)
        assert torch.equal(model(x), ref)


def test_default_cfg_contract_at_224():
    # timm's test_model_default_cfgs, at the default input size: unpooled NHWC features of pool_size,
    # pre-logits of head_hidden_size, reset_classifier(0) and (0, "") and the same through create_model.
    torch.manual_seed(0)
    model = timm.create_model("vmamba_t", **SMALL).eval()
    x = torch.randn(1, *model.pretrained_cfg["input_size"])
    pool = model.pretrained_cfg["pool_size"]
    assert model.output_fmt == "NHWC"
    with torch.no_grad():
        feats = model.forward_features(x)
        assert tuple(feats.shape) == (1, *pool, model.num_features)
        pre = model.forward_head(feats, pre_logits=True)
        assert tuple(pre.shape) == (1, model.head_hidden_size)
        assert model(x).shape == (1, 1000)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model.get_classifier().__class__ is torch.nn.Identity
        assert torch.allclose(model(x), pre)
        model.reset_classifier(0, "")
        assert tuple(model(x).shape) == (1, *pool, model.num_features)
        model.reset_classifier(7, "avg")
        assert model(x).shape == (1, 7) and model.cfg.num_classes == 7
        with pytest.raises(ValueError, match="global_pool"):
            model.reset_classifier(0, "max")
        bare = timm.create_model("vmamba_t", **SMALL, num_classes=0, global_pool="").eval()
        assert tuple(bare(x).shape) == (1, *pool, model.num_features)


# --------------------------------------------------------------------------- features
# Both stems / downsamplings (every variant's stage shapes: test_forward_backward_and_stage_shapes).
@pytest.mark.parametrize("name,h,w", [("vmamba_t", 97, 131), ("vanilla_vmamba_t", 97, 131), ("vmamba_s", 33, 17)])
def test_features_only_odd_sizes(name, h, w):
    torch.manual_seed(0)
    feat = _create(name, features_only=True).eval()
    dims = [i["num_chs"] for i in feat.feature_info.get_dicts()]
    assert feat.feature_info.channels() == dims and feat.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        outs = feat(torch.randn(1, 3, h, w))
    sizes = _stage_sizes(name, h, w)
    assert [tuple(o.shape) for o in outs] == [(1, c, *s) for c, s in zip(dims, sizes)]
    for o, r in zip(outs, feat.feature_info.reduction()):  # timm's own bound
        assert o.shape[2] <= math.ceil(h / r) + 1 and o.shape[3] <= math.ceil(w / r) + 1
        assert torch.isfinite(o).all()


def test_features_only_out_indices_and_backward():
    torch.manual_seed(0)
    feat = _create("vmamba_t", features_only=True, out_indices=(1, 3))
    assert feat.feature_info.channels() == [192, 768] and feat.feature_info.reduction() == [8, 32]
    assert len(feat.model.layers) == 4 and isinstance(feat.model.classifier.head, torch.nn.Identity)
    outs = feat(torch.randn(2, 3, 64, 80))
    assert [tuple(o.shape) for o in outs] == [(2, 192, 8, 10), (2, 768, 2, 3)]
    sum(o.square().mean() for o in outs).backward()
    grads = [p.grad for p in feat.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    last2 = _create("vmamba_t", features_only=True, out_indices=2)  # int: the last n stages
    assert last2.feature_info.reduction() == [16, 32]
    early = _create("vmamba_t", features_only=True, out_indices=(0, 1))  # later stages pruned away
    assert len(early.model.layers) == 2 and isinstance(early.model.layers[1].downsample, torch.nn.Identity)
    assert [tuple(o.shape) for o in early(torch.randn(1, 3, 64, 64))] == [(1, 96, 16, 16), (1, 192, 8, 8)]


def test_forward_intermediates():
    torch.manual_seed(0)
    model = _create("vmamba_t").eval()
    x = torch.randn(1, 3, 72, 40)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [tuple(t.shape) for t in inter] == [(1, c, *s) for c, s in zip(_dims(model), _stage_sizes(
            "vmamba_t", 72, 40))]
        nhwc = model.forward_intermediates(x, indices=[-1], output_fmt="NHWC", intermediates_only=True)
        assert len(nhwc) == 1 and torch.equal(nhwc[0], inter[-1].permute(0, 2, 3, 1))
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        assert torch.allclose(normed[0], model.classifier.norm(final).permute(0, 3, 1, 2))
        _, early = model.forward_intermediates(x, indices=(0,), stop_early=True)
        assert torch.equal(early[0], inter[0])
        model.set_grad_checkpointing()
        final2, inter2 = model.forward_intermediates(x)
        assert torch.equal(final2, final) and all(torch.equal(a, b) for a, b in zip(inter, inter2))
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")


def test_compile_fullgraph_features_with_checkpointing():
    # torch.compile where timm checks it: dynamo captures the whole features_only forward and backward (no graph
    # break), through the checkpointed blocks; "eager" backend keeps it cheap on a CPU. The classifier's forward
    # is captured in test_models.py (test_dynamo_fullgraph).
    torch.manual_seed(0)
    feat = timm.create_model("vanilla_vmamba_t", **SMALL, features_only=True, drop_path_rate=0.0)
    feat.model.set_grad_checkpointing()  # the wrapped VSSM (timm's FeatureGetterNet does not forward the call)
    compiled = torch.compile(feat, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 40, 56)
    outs = compiled(x)
    sum(o.square().mean() for o in outs).backward()
    ref = feat(x)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs, ref))


@pytest.mark.slow
def test_inductor_compile_matches_eager():
    torch.manual_seed(0)
    model = timm.create_model("vmamba_t", dims=16, depths=(1, 1), scan_backend="torch", num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = torch.compile(model)(x)
        ref = model(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()
    print(f"inductor compile + run: {time.perf_counter() - t0:.1f} s")


# --------------------------------------------------------------------------- weights files
def _same_except(a: dict, b: dict, skip: tuple[str, ...] = ()) -> bool:
    keys = [k for k in a if not k.startswith(skip)]
    return all(torch.equal(a[k], b[k]) for k in keys) and a.keys() == b.keys()


def _from_file(path, file_classes=None, **kw):
    """timm's head rule: the file's head is kept when the model's num_classes equals the pretrained_cfg's (1000,
    or what the overlay says the file has), dropped otherwise."""
    overlay = dict(file=str(path), **({"num_classes": file_classes} if file_classes else {}))
    return timm.create_model("vmamba_t", **SMALL, pretrained=True, pretrained_cfg_overlay=overlay, **kw)


def test_official_release_file_loads_through_pretrained_cfg_overlay(tmp_path):
    torch.manual_seed(1)
    src = timm.create_model("vmamba_t", **SMALL)  # an ImageNet-1k head, as the release's
    torch.save({"model": _to_legacy(src.state_dict()), "epoch": 299}, tmp_path / "vssm_tiny.pth")
    sd = src.state_dict()
    torch.manual_seed(2)
    same = _from_file(tmp_path / "vssm_tiny.pth")
    assert _same_except(same.state_dict(), sd)
    # Another class count: the file's head is dropped and the model keeps a fresh one, as timm does.
    other = _from_file(tmp_path / "vssm_tiny.pth", num_classes=3)
    osd = other.state_dict()
    assert osd["classifier.head.weight"].shape == (3, 128)
    assert _same_except(osd, sd, skip=("classifier.head.",))
    # Features only: the backbone's weights, NCHW stages.
    feat = _from_file(tmp_path / "vssm_tiny.pth", features_only=True)
    fsd = feat.model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in fsd.items() if not k.startswith("classifier.head"))


def test_vmbench_checkpoint_loads_through_pretrained_cfg_overlay(tmp_path):
    from vmbench.checkpoint import save_checkpoint
    from vmbench.weights import load_strict, read_weights

    torch.manual_seed(3)
    src = timm.create_model("vmamba_t", **SMALL, num_classes=4)
    compiled_keys = {f"_orig_mod.{k}": v for k, v in src.state_dict().items()}  # saved from a compiled model
    ema = {k: torch.zeros_like(v) for k, v in compiled_keys.items()}
    path = save_checkpoint(tmp_path / "last.pt", {"model": compiled_keys, "ema": ema, "epochs_done": 3,
                                                   "optimizer": {"state": {}, "param_groups": []}})
    model = _from_file(path, file_classes=4, num_classes=4)
    assert _same_except(model.state_dict(), src.state_dict())  # "model", not the EMA
    fresh_head = _from_file(path, num_classes=4)  # the cfg says 1000 classes: timm drops the file's head
    assert _same_except(fresh_head.state_dict(), src.state_dict(), skip=("classifier.head.weight",))
    assert not torch.equal(fresh_head.classifier.head.weight, src.classifier.head.weight)
    # And the other way: a timm-created VMamba is an ordinary vmbench model for vmbench.weights.
    torch.manual_seed(4)
    again = timm.create_model("vmamba_t", **SMALL, num_classes=4)
    load_strict(again, read_weights(path))
    assert _same_except(again.state_dict(), src.state_dict())


def test_missing_weights_file_is_refused():
    with pytest.raises(FileNotFoundError):
        _from_file("/nonexistent/vssm.pth")
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model("vmamba_t", **SMALL, pretrained=True)  # no URL, no hub: nothing is downloaded


# --------------------------------------------------------------------------- timm's benchmark.py (smoke, CPU)
@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(".timm-bench/benchmark.py"),
                    reason="timm's benchmark.py is fetched into .timm-bench/ (git-ignored), not committed")
def test_timm_check_script_runs_on_cpu(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), DEVICE="cpu", BATCH="2", WARM="1", ITERS="5", MODES="eager",
               IMG="64", MODELS="vmamba_t")
    subprocess.run(["bash", "benchmarks/timm_check.sh"], env=env, check=True, timeout=600)
    text = (tmp_path / "timm_check.csv").read_text()
    assert "vmamba_t" in text and "train_samples_per_sec" in text
