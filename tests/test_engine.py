"""The PBT member engine: budgets, determinism, divergence, state, hyperparameters, learning."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from conftest import load_benchmark

from rpu_ray.engine import Member
from rpu_ray.models import LossOutput

SHAPE = (1, 32, 32)


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _member(seed: int = 0, **overrides) -> Member:
    hparams = {"lr": 1e-3, "batch_size": 8, "beta": 4.0}
    hparams.update(overrides.pop("hparams", {}))
    options = {"num_models": 2, "image_shape": SHAPE, "z_dim": 4, "seed": seed, **overrides}
    return Member(hparams, **options)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return ((torch.rand(n, *SHAPE, generator=generator) < 0.3) * 255).to(torch.uint8)


def _squares(n: int) -> torch.Tensor:
    """A learnable toy set: one 8x8 white square per image at varying positions."""
    images = torch.zeros(n, *SHAPE, dtype=torch.uint8)
    for i in range(n):
        row, col = 3 * (i % 8), 3 * ((i // 8) % 8)
        images[i, 0, row : row + 8, col : col + 8] = 255
    return images


def _record_batches(member: Member, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Replaces the training step by a recorder of the batches it receives (no compute)."""
    batches: list[torch.Tensor] = []

    def fake_step(images: torch.Tensor, index: torch.Tensor) -> LossOutput:
        batches.append(images[index])
        zeros = torch.zeros(member.num_models)
        return LossOutput(zeros, {"recon": zeros})

    monkeypatch.setattr(member, "train_step", fake_step)
    return batches


def _assert_same_state(a: Member, b: Member) -> None:
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name


def test_same_seed_gives_identical_training() -> None:
    images = _images(40)
    a, b, c = _member(seed=3), _member(seed=3), _member(seed=4)
    results = [m.train(images, 48) for m in (a, b, c)]
    _assert_same_state(a, b)
    assert results[0]["loss"] == results[1]["loss"]
    assert not torch.equal(a.model.encoder[0].weight, c.model.encoder[0].weight)


@pytest.mark.parametrize(
    ("num_images", "batch_size", "budget", "expected_sizes"),
    [
        # two passes of 32+32+32+4, then 32 and the truncated 18
        (100, 32, 250, [32, 32, 32, 4] * 2 + [32, 18]),
        # a last batch of one image would remain: the generation ends one image short
        (100, 32, 97, [32, 32, 32]),
        # 65 = 2 * 32 + 1: each pass drops its last image instead of a batch of one
        (65, 32, 128, [32, 32, 32, 32]),
        # batch size larger than the subset: clamped to it
        (10, 500, 25, [10, 10, 5]),
        # batch size 1: clamped to 2
        (6, 1, 7, [2, 2, 2]),
    ],
)
def test_budget_accounting(
    monkeypatch: pytest.MonkeyPatch,
    num_images: int,
    batch_size: int,
    budget: int,
    expected_sizes: list[int],
) -> None:
    member = _member(hparams={"batch_size": batch_size})
    batches = _record_batches(member, monkeypatch)
    result = member.train(_labelled_images(num_images), budget)
    assert [len(b) for b in batches] == expected_sizes
    assert result["images_seen"] == sum(expected_sizes)
    assert result["steps"] == len(expected_sizes)
    assert result["batch_size"] == min(max(batch_size, 2), num_images)
    assert member.total_images == sum(expected_sizes)


def _labelled_images(n: int) -> torch.Tensor:
    """Image i is filled with the value i, so a batch tells which images it holds."""
    return torch.arange(n, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, *SHAPE).contiguous()


def test_each_pass_is_a_fresh_permutation(monkeypatch: pytest.MonkeyPatch) -> None:
    member = _member(hparams={"batch_size": 32})
    batches = _record_batches(member, monkeypatch)
    member.train(_labelled_images(100), 250)
    ids = torch.cat([b[:, 0, 0, 0] for b in batches]).tolist()
    assert sorted(ids[:100]) == sorted(ids[100:200]) == list(range(100))
    assert ids[:100] != ids[100:200]
    assert len(set(ids[200:])) == 50
    # 65 images in batches of 32: each pass drops its 65th image rather than train on it alone.
    batches.clear()
    member.train(_labelled_images(65), 128)
    ids = torch.cat([b[:, 0, 0, 0] for b in batches]).tolist()
    assert len(set(ids[:64])) == len(set(ids[64:])) == 64


def test_budget_equals_images_seen_when_divisible(monkeypatch: pytest.MonkeyPatch) -> None:
    member = _member(hparams={"batch_size": 16})
    _record_batches(member, monkeypatch)
    result = member.train(_images(64), 480)
    assert (result["images_seen"], result["steps"]) == (480, 30)


def test_invalid_inputs_raise() -> None:
    member = _member()
    with pytest.raises(ValueError, match="at least 2 images"):
        member.train(_images(1), 10)
    with pytest.raises(ValueError, match="uint8"):
        member.train(_images(8).float(), 10)
    with pytest.raises(ValueError, match="uint8"):
        member.train(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), 10)
    with pytest.raises(ValueError, match="budget"):
        member.train(_images(8), 1)
    with pytest.raises(ValueError, match="missing"):
        Member({"lr": 1e-3, "batch_size": 8}, image_shape=SHAPE)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        member.set_hyperparameters(gamma=3.0)
    with pytest.raises(ValueError, match="batch_size"):
        member.set_hyperparameters(batch_size=0)


@pytest.mark.parametrize("cause", ["injected_nan", "huge_lr"])
def test_divergence_is_flagged_without_raising(cause: str) -> None:
    member = _member(hparams={"lr": 1e6 if cause == "huge_lr" else 1e-3}, nan_check_every=2)
    if cause == "injected_nan":
        with torch.no_grad():
            member.model.decoder[0].weight[0, 0] = float("nan")
    result = member.train(_images(32), 64 * 8)
    assert result["diverged"] is True
    # The generation (64 steps of 8) ended at the first check that saw a non-finite loss:
    # checks come every 2 steps, and a NaN weight makes the first loss NaN.
    assert result["steps"] % 2 == 0 and result["steps"] < 64
    if cause == "injected_nan":
        assert result["steps"] == 2 and result["images_seen"] == 16
    healthy = _member().train(_images(32), 16)
    assert healthy["diverged"] is False


def test_weights_made_non_finite_by_the_last_step_mark_the_member_diverged() -> None:
    member = _member()
    step = member.optimizer.step

    def step_then_overflow(*args, **kwargs):
        result = step(*args, **kwargs)
        with torch.no_grad():
            member.model.decoder[0].weight[0, 0] = float("inf")
        return result

    member.optimizer.step = step_then_overflow
    # One step: its loss was computed before the update.
    result = member.train(_images(32), member.batch_size_for(32))
    assert result["steps"] == 1 and all(math.isfinite(v) for v in result["loss"])
    assert result["diverged"] is True


def test_a_non_finite_discriminator_marks_the_member_diverged() -> None:
    # FactorVAE's discriminator trains after the step's loss was computed: a last step that
    # breaks it shows in no loss of the generation, only in the state check.
    member = Member({"lr": 1e-3, "batch_size": 8, "gamma": 10.0}, num_models=2,
                    image_shape=SHAPE, z_dim=4, loss="factorvae")
    discriminator_step = member.loss_fn.after_step

    def step_then_overflow() -> None:
        discriminator_step()
        with torch.no_grad():
            member.loss_fn.discriminator.weights[0][0, 0, 0] = float("inf")

    member.loss_fn.after_step = step_then_overflow
    result = member.train(_images(32), member.batch_size_for(32))
    assert result["steps"] == 1 and all(math.isfinite(v) for v in result["loss"])
    assert result["diverged"] is True


def test_state_round_trip_continues_identically() -> None:
    images = _images(30)
    original = _member(seed=1, hparams={"batch_size": 7, "beta": 3.0})
    original.train(images, 40)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    restored = _member(seed=99)  # different seed and hyperparameters: all come from the state
    restored.load_state_dict(state)
    assert restored.hyperparameters == {"lr": 1e-3, "batch_size": 7, "beta": 3.0}
    assert restored.total_steps == original.total_steps
    result_original = original.train(images, 40)
    result_restored = restored.train(images, 40)
    assert result_restored["loss"] == result_original["loss"]
    _assert_same_state(original, restored)
    exp_avg = [s["exp_avg"] for s in original.optimizer.state_dict()["state"].values()]
    exp_avg_restored = [s["exp_avg"] for s in restored.optimizer.state_dict()["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(exp_avg, exp_avg_restored, strict=True))

    with pytest.raises(ValueError, match="configuration"):
        _member(num_models=3).load_state_dict(state)


def test_clones_of_one_in_memory_state_train_independently() -> None:
    # PBT in one process clones two members from the same donor state (no file in between):
    # each must continue as the donor would, not share Adam's moments and step counters.
    images = _images(30)
    donor = _member(seed=1)
    donor.train(images, 40)
    state = donor.state_dict()
    donor_steps = float(state["optimizer"]["state"][0]["step"])
    first, second = _member(seed=2), _member(seed=3)
    first.load_state_dict(state)
    second.load_state_dict(state)
    first.train(images, 40)
    second_alone = _member(seed=4)
    second_alone.load_state_dict(state)
    assert second.train(images, 40)["loss"] == second_alone.train(images, 40)["loss"]
    _assert_same_state(second, second_alone)
    assert float(donor.optimizer.state_dict()["state"][0]["step"]) == donor_steps


def test_a_state_saved_on_another_device_kind_restores_deterministically() -> None:
    # A CUDA generator's state is 16 bytes; a CPU member cannot take it as it is.
    images = _images(30)
    state = _member(seed=1).state_dict()
    state["generator"] = torch.arange(16, dtype=torch.uint8)
    first, second = _member(seed=2), _member(seed=3)
    first.load_state_dict(state)
    second.load_state_dict(state)
    assert first.train(images, 40)["loss"] == second.train(images, 40)["loss"]
    _assert_same_state(first, second)


def test_a_state_from_a_fused_channels_last_member_updates_the_right_weights() -> None:
    # What a CUDA member with channels_last saves: fused Adam, moments in channels-last layout.
    # Fused kernels pair moments with weights by memory order; a contiguous CPU member must
    # continue exactly as from the same state in its own layout and implementation.
    images = _images(30)
    donor = _member(seed=1, channels_last=True)
    donor.train(images, 40)
    gpu_like = donor.state_dict()
    for group in gpu_like["optimizer"]["param_groups"]:
        group["fused"] = True
    assert any(not m.is_contiguous() for s in gpu_like["optimizer"]["state"].values()
               for m in (s["exp_avg"], s["exp_avg_sq"]))
    own_layout = copy.deepcopy(gpu_like)
    for group in own_layout["optimizer"]["param_groups"]:
        group["fused"] = None
    for moments in own_layout["optimizer"]["state"].values():
        for name in ("exp_avg", "exp_avg_sq"):
            moments[name] = moments[name].contiguous()
    restored, reference = _member(seed=2), _member(seed=2)
    restored.load_state_dict(gpu_like)
    reference.load_state_dict(own_layout)
    assert restored.train(images, 40)["loss"] == reference.train(images, 40)["loss"]
    _assert_same_state(restored, reference)


def test_set_hyperparameters_after_loading() -> None:
    member = _member()
    member.load_state_dict(_member(seed=5).state_dict())
    member.set_hyperparameters(lr=0.02, batch_size=16.0, beta=8)
    assert [g["lr"] for g in member.optimizer.param_groups] == [0.02]
    assert member.hyperparameters == {"lr": 0.02, "batch_size": 16, "beta": 8.0}
    assert member.batch_size_for(100) == 16


def test_encode_is_deterministic_in_eval_mode() -> None:
    member = _member()
    images = _images(20)
    member.train(images, 16)
    mu, logsigma = member.encode(images, batch_size=7)
    assert mu.shape == logsigma.shape == (2, 20, 4)
    again, _ = member.encode(images, batch_size=20)
    torch.testing.assert_close(mu, again)
    member.model.eval()
    expected, _ = member.model.encode(images.float() / 255)
    torch.testing.assert_close(mu, expected)
    member.model.train()
    assert member.model.training  # encode restored the training mode


def test_bf16_and_channels_last_options_train() -> None:
    images = _images(16)
    reference = _member().train(images, 8)
    assert _member().model.encoder[0].weight.dtype == torch.float32
    member = _member(bf16=True, channels_last=True)
    assert member.model.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    result = member.train(images, 8)
    assert result["diverged"] is False
    # Same weights, data and noise: close to float32, but visibly rounded by the bf16 forward
    # (channels_last alone changes the loss by ~1e-7 relative).
    for low, full in zip(result["loss"], reference["loss"], strict=True):
        assert 1e-5 < abs(low - full) / full < 0.05


@pytest.mark.parametrize("arch", ["authors", "dlib"])
def test_training_lowers_the_loss(arch: str) -> None:
    torch.manual_seed(0)
    member = _member(arch=arch)  # batch size 8, lr 1e-3, beta 4
    images = _squares(64)
    first = member.train(images, 8 * 10)
    for _ in range(7):
        last = member.train(images, 8 * 10)
    assert member.total_steps == 80
    for before, after in zip(first["loss"], last["loss"], strict=True):
        assert after < 0.6 * before


def test_throughput_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    rows = load_benchmark("throughput").main(["--smoke"])
    assert [(r["variant"], r["dtype"]) for r in rows] == [("fused", "fp32"), ("looped", "fp32")]
    assert all(set(row["rates"]) == {4, 8} for row in rows)
    table = capsys.readouterr().out
    # The table prints the measured rates and, per batch size, their fused / looped ratio.
    fused, looped = (row["rates"] for row in rows)
    assert f"| fused | fp32 | {fused[4]:,.0f} | {fused[8]:,.0f} |" in table
    assert (f"| fused / looped | fp32 | {fused[4] / looped[4]:.1f}x | "
            f"{fused[8] / looped[8]:.1f}x |") in table
