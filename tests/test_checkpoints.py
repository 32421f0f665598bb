"""Loading weights: timm-layout files, Google .npz, timm tags, and every way a file can be bad."""

import os
import pickle
import shlex

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import _load_weights as timm_load_npz

import vitlib
from vitlib.checkpoints import (
    CheckpointError,
    adapt_state_dict,
    create_model,
    export_to_timm,
    read_checkpoint,
    sha256_file,
)

TINY_TIMM = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)


def _timm_tiny(num_classes=1000):
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **TINY_TIMM
    ).eval()


def _max_diff(a, b, x):
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
def test_timm_file_loads_with_identical_logits(tmp_path, suffix):
    reference = _timm_tiny()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(reference.state_dict(), path)
    else:
        torch.save(reference.state_dict(), path)
    ours = vitlib.create_model("vit_tiny_patch16_224", pretrained=path, **TINY_TIMM).eval()
    assert _max_diff(ours, reference, torch.randn(2, 3, 32, 32)) <= 1e-5
    assert ours.provenance["sha256"] == sha256_file(path)


def test_study_weights_file_name_brings_its_preprocessing(tmp_path):
    """The study's file: ViT-B/16 in timm layout, JAX normalisation 0.5/0.5, crop 0.9."""
    path = tmp_path / "jx_vit_base_p16_224-80ecf9dd.pth"
    reference = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    torch.save(reference.state_dict(), path)
    ours = create_model("vit_base_patch16_224", pretrained=path, num_classes=2).eval()
    cfg = ours.pretrained_cfg
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["crop_pct"] == 0.9 and cfg["input_size"] == (3, 224, 224)
    assert cfg["timm_tag"] == "vit_base_patch16_224.orig_in21k_ft_in1k"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():  # the backbone is the checkpoint's; the new 2-class head is fresh
        assert (
            ours.extract_features(x)
            - reference.forward_head(reference.forward_features(x), pre_logits=True)
        ).abs().max() <= 1e-5


def test_export_back_to_timm(tmp_path):
    ours = create_model("vit_tiny_patch16_224", **TINY_TIMM).eval()
    ours.head.weight.data.normal_()
    path = tmp_path / "vitlib.pth"
    torch.save(ours.state_dict(), path)
    reference = _timm_tiny()
    reference.load_state_dict(torch.load(path, weights_only=True))
    assert _max_diff(ours, reference, torch.randn(2, 3, 32, 32)) <= 1e-5
    ours.reset_classifier(2)
    twin = export_to_timm(ours)
    assert twin.num_classes == 2 and not twin.training
    assert _max_diff(ours, twin, torch.randn(2, 3, 32, 32)) <= 1e-5


def _official_npz(path, *, depth=2, dim=32, heads=4, patch=8, grid=4, classes=1000, mlp=128):
    """Random arrays under the official JAX ViT names and (in, out) layouts."""
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.normal(0, 0.2, shape).astype(np.float32)

    arrays = {
        "embedding/kernel": r(patch, patch, 3, dim),
        "embedding/bias": r(dim),
        "cls": r(1, 1, dim),
        "Transformer/posembed_input/pos_embedding": r(1, grid * grid + 1, dim),
        "Transformer/encoder_norm/scale": 1 + r(dim),
        "Transformer/encoder_norm/bias": r(dim),
        "head/kernel": r(dim, classes),
        "head/bias": r(classes),
    }
    dh = dim // heads
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}"
        m = f"{b}/MultiHeadDotProductAttention_1"
        for n in ("query", "key", "value"):
            arrays[f"{m}/{n}/kernel"] = r(dim, heads, dh)
            arrays[f"{m}/{n}/bias"] = r(heads, dh)
        arrays[f"{m}/out/kernel"] = r(heads, dh, dim)
        arrays[f"{m}/out/bias"] = r(dim)
        for j in (0, 2):
            arrays[f"{b}/LayerNorm_{j}/scale"] = 1 + r(dim)
            arrays[f"{b}/LayerNorm_{j}/bias"] = r(dim)
        arrays[f"{b}/MlpBlock_3/Dense_0/kernel"] = r(dim, mlp)
        arrays[f"{b}/MlpBlock_3/Dense_0/bias"] = r(mlp)
        arrays[f"{b}/MlpBlock_3/Dense_1/kernel"] = r(mlp, dim)
        arrays[f"{b}/MlpBlock_3/Dense_1/bias"] = r(dim)
    np.savez(path, **arrays)
    return arrays


def test_official_npz_loads_like_timms_own_npz_loader(tmp_path):
    path = tmp_path / "ViT-Ti_8.npz"
    _official_npz(path)
    reference = _timm_tiny()
    timm_load_npz(reference, str(path))
    ours = create_model("vit_tiny_patch16_224", pretrained=path, **TINY_TIMM).eval()
    assert _max_diff(ours, reference, torch.randn(2, 3, 32, 32)) <= 1e-5
    assert ours.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)  # JAX normalisation


def test_npz_with_foreign_arrays_is_refused(tmp_path):
    path = tmp_path / "odd.npz"
    arrays = _official_npz(path)
    np.savez(path, **arrays, **{"Transformer/extra/kernel": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match="Transformer/extra/kernel"):
        read_checkpoint(path)


def test_head_of_another_size_is_replaced(tmp_path):
    reference = _timm_tiny()
    path = tmp_path / "w.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model("vit_tiny_patch16_224", pretrained=path, num_classes=2, **TINY_TIMM)
    assert ours.head.weight.shape == (2, 32)
    assert torch.equal(ours.blocks[1].mlp.fc2.weight, reference.blocks[1].mlp.fc2.weight)
    assert torch.count_nonzero(ours.head.weight) == 0  # fresh zero-init head


def test_checkpoint_at_another_image_size_is_resampled_like_timm(tmp_path):
    reference = _timm_tiny()
    path = tmp_path / "w.pth"
    torch.save(reference.state_dict(), path)
    sizes = {**TINY_TIMM, "img_size": 64}
    ours = create_model("vit_tiny_patch16_224", pretrained=path, **sizes).eval()
    timm_64 = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        **sizes,
    ).eval()
    assert _max_diff(ours, timm_64, torch.randn(2, 3, 64, 64)) <= 1e-5


def test_wrong_architecture_lists_the_keys(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_timm_tiny().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"wrong shape .*blocks\.0") as err:
        create_model("vit_tiny_patch16_224", pretrained=path, **{**TINY_TIMM, "embed_dim": 64})
    assert "another ViT size" in str(err.value)
    with pytest.raises(CheckpointError, match=r"unexpected \(\d+\): blocks\.1"):
        create_model("vit_tiny_patch16_224", pretrained=path, **{**TINY_TIMM, "depth": 1})


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_timm_tiny().state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        create_model("vit_tiny_patch16_224", pretrained=path, **TINY_TIMM)
    sf = tmp_path / "w.safetensors"
    sf.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(sf)


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickles_that_are_not_state_dicts_are_refused(tmp_path, capsys):
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listing)
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_checkpoint(listing)
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(evil)
    assert "code ran" not in capsys.readouterr().out


def test_missing_file_and_mismatched_tag():
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("vit_tiny_patch16_224", pretrained="nowhere/weights.pth")
    with pytest.raises(CheckpointError, match="is for 'vit_small_patch16_224'"):
        create_model("vit_tiny_patch16_224", pretrained="vit_small_patch16_224.augreg_in21k")
    with pytest.raises(CheckpointError, match="not a timm pretrained tag"):
        create_model("vit_tiny_patch16_224", pretrained="vit_tiny_patch16_224.no_such_tag")


def test_tag_offline_says_how_to_pass_a_file(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        create_model("vit_base_patch16_224", pretrained="vit_base_patch16_224.orig_in21k_ft_in1k")
    message = str(err.value)
    assert "jx_vit_base_p16_224-80ecf9dd.pth" in message  # the file to fetch
    assert "pass its path" in message and "--weights" in message


def test_tag_download_goes_through_the_hub(tmp_path, monkeypatch):
    reference = _timm_tiny()
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), path)
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    tag = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    ours = create_model("vit_tiny_patch16_224", pretrained=tag, **TINY_TIMM).eval()
    assert calls == [("timm/" + tag, "model.safetensors")]
    assert ours.provenance["weights"] == tag
    assert _max_diff(ours, reference, torch.randn(1, 3, 32, 32)) <= 1e-5


@pytest.mark.parametrize(
    "options, timm_class",
    [
        (dict(distilled=True), "VisionTransformerDistilled"),
        (dict(class_token=False, global_pool="avg"), "VisionTransformer"),
    ],
)
def test_export_of_distilled_and_class_token_free_models_round_trips(options, timm_class):
    ours = vitlib.create_model("vit_custom", num_classes=3, **TINY_TIMM, **options).eval()
    for head in ours.heads():
        head.weight.data.normal_()  # zero-init heads would hide a head mix-up
    twin = export_to_timm(ours)
    assert type(twin).__name__ == timm_class and not twin.training
    assert {k: v.shape for k, v in twin.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in ours.state_dict().items())
    assert _max_diff(ours, twin, torch.randn(2, 3, 32, 32)) <= 1e-5
    back = vitlib.create_model("vit_custom", num_classes=3, **TINY_TIMM, **options).eval()
    back.load_state_dict(twin.state_dict())
    assert _max_diff(back, ours, torch.randn(2, 3, 32, 32)) == 0


@pytest.mark.parametrize(
    "options",
    [dict(pos_embed="sincos"), dict(attention="reattention"), dict(attention="performer")],
)
def test_export_refuses_variants_timm_cannot_hold(options):
    model = vitlib.create_model("vit_custom", **TINY_TIMM, **options)
    with pytest.raises(ValueError, match="timm has no twin of this variant"):
        export_to_timm(model)


def test_a_distilled_checkpoint_gets_two_fresh_heads_of_the_new_size(tmp_path):
    """DeiT's 1000-class class and distillation heads are both dropped for a 2-class model;
    every other weight loads."""
    torch.manual_seed(0)
    reference = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False,
                                  **TINY_TIMM)  # fmt: skip
    path = tmp_path / "deit.safetensors"
    save_file(reference.state_dict(), path)
    ours = create_model("vit_custom", pretrained=path, num_classes=2, distilled=True, **TINY_TIMM)
    assert ours.head.weight.shape == ours.head_dist.weight.shape == (2, 32)
    assert torch.all(ours.head_dist.weight == 0)  # fresh, zero-initialised
    for key, value in reference.state_dict().items():
        if not key.startswith(("head.", "head_dist.")):
            assert torch.equal(ours.state_dict()[key], value), key


# --- untrusted files -----------------------------------------------------------------------


class RunsAShellCommand:
    """Unpickled, this would run `touch <marker>`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class TrustedDict(dict):
    """A state dict of a class torch's safe loader does not know: refused, yet harmless."""


TORCH_ADVICE = ("weights_only` set to `False`", "will likely succeed")


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path, kind):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    if kind == "pickle":
        evil.write_bytes(pickle.dumps(RunsAShellCommand(marker)))
    else:
        torch.save({"head.weight": torch.zeros(2), "x": RunsAShellCommand(marker)}, evil)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(evil)
    with pytest.raises(CheckpointError):
        create_model("vit_tiny_patch16_224", pretrained=evil, **TINY_TIMM)
    assert not marker.exists()
    message = str(err.value)
    assert message.startswith(f"refused to load {evil}: it is a pickle")
    assert "could run code" in message and "vitlib did not load it" in message
    assert "safetensors.torch.save_file" in message and "weights_only=False" in message
    assert not any(advice in message for advice in TORCH_ADVICE)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # torch's text hidden
    if kind == "torch.save":
        assert "(it names posix.system" in message or "(it names nt.system" in message


def test_the_conversion_recipe_turns_a_trusted_pickle_into_safetensors(tmp_path):
    reference = _timm_tiny()
    trusted = tmp_path / "trusted.pth"
    torch.save(TrustedDict(reference.state_dict()), trusted)
    with pytest.raises(CheckpointError, match="TrustedDict") as err:
        read_checkpoint(trusted)
    recipe = [line.strip() for line in str(err.value).splitlines() if line.startswith("  ")]
    assert len(recipe) == 2
    import safetensors.torch

    exec("\n".join(recipe), {"torch": torch, "safetensors": safetensors})  # the user's step
    converted = trusted.with_suffix(".safetensors")
    ours = create_model("vit_tiny_patch16_224", pretrained=converted, **TINY_TIMM).eval()
    assert _max_diff(ours, reference, torch.randn(2, 3, 32, 32)) <= 1e-5


def _good_file(path):
    state = _timm_tiny().state_dict()
    if path.suffix == ".npz":
        _official_npz(path)
    elif path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors", ".npz"])
@pytest.mark.parametrize("damage", ["empty", "truncated", "tail cut"])
def test_empty_and_truncated_files_are_clear_errors(tmp_path, suffix, damage):
    path = _good_file(tmp_path / f"w{suffix}")
    data = path.read_bytes()
    path.write_bytes(
        {"empty": b"", "truncated": data[: len(data) // 2], "tail cut": data[:-7]}[damage]
    )
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "download it again" in message
    if damage == "empty":
        assert "is empty (0 bytes)" in message
    else:
        assert message.startswith(f"cannot read checkpoint {path}: ")
        assert "truncated" in message and "\n" not in message


# --- the exporter and the adapter, checked where a mistake would show -----------------------


def test_export_to_timm_carries_a_trained_head():
    """A 2-class head with random weights (a zero head would hide one left behind)."""
    ours = create_model("vit_tiny_patch16_224", **TINY_TIMM).eval()
    ours.reset_classifier(2)
    torch.manual_seed(1)
    with torch.no_grad():
        ours.head.weight.normal_()
        ours.head.bias.normal_()
    twin = export_to_timm(ours)
    assert torch.equal(twin.head.weight, ours.head.weight)
    assert torch.equal(twin.head.bias, ours.head.bias)
    x = torch.randn(4, 3, 32, 32)
    assert _max_diff(ours, twin, x) <= 1e-5
    zero_head = export_to_timm(ours)
    torch.nn.init.zeros_(zero_head.head.weight)
    assert _max_diff(ours, zero_head, x) > 1e-2  # a head left behind would show in the logits


def test_a_checkpoint_missing_a_block_weight_is_refused_listing_it(tmp_path):
    state = _timm_tiny().state_dict()
    del state["blocks.0.norm1.weight"]
    model = create_model("vit_tiny_patch16_224", **TINY_TIMM)
    kept = dict(state)
    with pytest.raises(CheckpointError, match=r"missing \(1\): blocks\.0\.norm1\.weight\n") as err:
        adapt_state_dict(state, model)
    assert "another ViT size" in str(err.value) and "unexpected" not in str(err.value)
    assert state.keys() == kept.keys()  # pure: the argument is left as it was
    path = tmp_path / "w.safetensors"
    save_file(state, path)
    with pytest.raises(CheckpointError, match=r"missing \(1\): blocks\.0\.norm1\.weight"):
        create_model("vit_tiny_patch16_224", pretrained=path, **TINY_TIMM)
