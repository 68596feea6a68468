"""Adversarial attacks (pytest_unsafebench.robustness.attacks) on a tiny deterministic CNN.

The model is trained for about a second on synthetic 3 x 16 x 16 images whose class is the sign
of a smooth template's contrast, so it is accurate and attackable at small eps. The ART checks
need adversarial-robustness-toolbox (a dev dependency) and skip without it; the end-to-end
check trains the demo classifier (about 15 s) and is marked slow.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from pytest_unsafebench.robustness.attacks import (  # noqa: E402
    ATTACKS,
    AttackSpec,
    logits_from_scores,
    paper_spec,
    run_attack,
)

TOL = 1e-6


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    template = F.interpolate(torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(7)),
                             size=(16, 16), mode="bilinear", align_corners=False)
    template = template / template.abs().max()
    y = torch.randint(0, 2, (n,), generator=g)
    contrast = torch.rand(n, generator=g) * 0.15 + 0.03  # varied margins: gradual eps curves
    x = (0.5 + (2 * y - 1).float().view(-1, 1, 1, 1) * contrast.view(-1, 1, 1, 1) * template
         + 0.12 * torch.randn(n, 3, 16, 16, generator=g))
    return x.clamp(0, 1), y


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny tensors: one thread is faster and steadier than two under pytest-xdist.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(one_thread: None) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # never disturb the global RNG
        torch.manual_seed(0)
        m = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 2),
        )
        x, y = make_data(1024, 1)
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(4):
            for i in range(0, len(x), 64):
                loss = F.cross_entropy(m(x[i:i + 64]), y[i:i + 64])
                opt.zero_grad()
                loss.backward()
                opt.step()
    m.eval()
    for p in m.parameters():
        p.grad = None
    return m


@pytest.fixture(scope="module")
def data(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """64 test images that the model classifies correctly (the robustness pool's rule)."""
    x, y = make_data(96, 99)
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    assert int(keep.sum()) >= 64, "the tiny model should be accurate"
    return x[keep][:64], y[keep][:64]


def cheap(name: str, eps: float, seed: int = 0, mode: str = "pixel") -> AttackSpec:
    """Each attack with a small budget, for property tests."""
    extra: dict[str, object] = {
        "pgd": {"steps": 3}, "deepfool": {"steps": 5}, "square": {"queries": 20},
        "spsa": {"queries": 16, "samples": 2},
    }.get(name, {})
    return AttackSpec(name, eps, seed=seed, mode=mode, **extra)  # type: ignore[arg-type]


def assert_within(result, x: torch.Tensor) -> None:
    eps_c = torch.tensor(result.eps_pixel).view(1, 3, 1, 1)
    delta = (result.x_adv - x).abs()
    assert bool((delta <= eps_c + TOL).all()), f"L-inf bound broken: {float((delta - eps_c).max())}"
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    assert torch.allclose(result.linf, delta.flatten(1).amax(1))
    if result.spec.name == "gaussian" and result.spec.mode == "pixel":
        assert bool((result.l2 <= result.spec.eps * (1 + 1e-5) + TOL).all())


# ------------------------------------------------------------------------------ bounds
@pytest.mark.parametrize("name", ATTACKS)
@settings(max_examples=12, deadline=None, derandomize=True)
@given(eps=st.floats(0.0, 0.1), seed=st.integers(0, 2**31 - 1))
def test_every_attack_stays_in_the_eps_ball_and_the_pixel_range(
        name: str, eps: float, seed: int, model: nn.Module, data) -> None:
    x, y = data[0][:16], data[1][:16]
    result = run_attack(model, x, y, cheap(name, eps, seed))
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert_within(result, x)
    assert result.eps_pixel == (eps, eps, eps)
    assert result.success.dtype == torch.bool
    assert torch.equal(result.success, result.pred != y)


@pytest.mark.parametrize("name", ATTACKS)
@settings(max_examples=6, deadline=None, derandomize=True)
@given(eps=st.floats(0.0, 0.05), std=st.tuples(*[st.floats(0.1, 1.0)] * 3))
def test_paper_mode_bounds_each_channel_by_eps_times_std(
        name: str, eps: float, std: tuple[float, float, float], model: nn.Module, data) -> None:
    x, y = data[0][:8], data[1][:8]
    result = run_attack(model, x, y, cheap(name, eps, mode="paper"), pixel_std=std)
    assert result.eps_pixel == pytest.approx([eps * s for s in std], rel=1e-6)
    assert_within(result, x)
    if name == "gaussian":  # L2 = eps in normalised units
        z = ((result.x_adv - x) / torch.tensor(std).view(1, 3, 1, 1)).flatten(1).norm(dim=1)
        assert bool((z <= eps * (1 + 1e-5) + TOL).all())


def test_paper_mode_converts_eps_through_the_std(model: nn.Module, data) -> None:
    x, y = data
    std = (0.25, 0.5, 0.1)
    result = run_attack(model, x, y, paper_spec("fgsm"), pixel_std=std)
    per_channel = (result.x_adv - x).abs().amax(dim=(0, 2, 3))
    # FGSM moves every pixel with a nonzero gradient by exactly eps * std_c (none clip here).
    assert per_channel.tolist() == pytest.approx([0.01 * s for s in std], rel=1e-4)


@pytest.mark.parametrize("name", ["gaussian", "fgsm", "pgd", "deepfool"])
def test_paper_mode_without_std_is_a_clear_error(name: str, model: nn.Module, data) -> None:
    with pytest.raises(ValueError, match="input_std"):
        run_attack(model, data[0][:4], data[1][:4], paper_spec(name))


# ----------------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", ATTACKS)
def test_same_seed_same_result(name: str, model: nn.Module, data) -> None:
    x, y = data[0][:16], data[1][:16]
    a = run_attack(model, x, y, cheap(name, 0.05, seed=5))
    state = torch.random.get_rng_state()
    b = run_attack(model, x, y, cheap(name, 0.05, seed=5))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert torch.equal(torch.random.get_rng_state(), state), "the global RNG was used"


@pytest.mark.parametrize("name", ["gaussian", "pgd", "square", "spsa"])
def test_seed_changes_random_attacks(name: str, model: nn.Module, data) -> None:
    x, y = data[0][:16], data[1][:16]
    a = run_attack(model, x, y, cheap(name, 0.05, seed=1))
    b = run_attack(model, x, y, cheap(name, 0.05, seed=2))
    assert not torch.equal(a.x_adv, b.x_adv)


def test_no_gradients_are_left_on_the_model(model: nn.Module, data) -> None:
    for name in ("fgsm", "pgd", "deepfool"):
        run_attack(model, data[0][:8], data[1][:8], cheap(name, 0.03))
    assert all(p.grad is None for p in model.parameters())


def test_inputs_made_under_inference_mode_are_fine(model: nn.Module, data) -> None:
    with torch.inference_mode():
        x = data[0][:8].clone()
    result = run_attack(model, x, data[1][:8], cheap("pgd", 0.03))
    assert_within(result, data[0][:8])


# ---------------------------------------------------------------------- effectiveness
def success_count(model: nn.Module, data, spec: AttackSpec) -> int:
    return int(run_attack(model, data[0], data[1], spec).success.sum())


EPS_GRID = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08)


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_success_grows_with_eps(name: str, model: nn.Module, data) -> None:
    counts = [success_count(model, data, AttackSpec(name, eps)) for eps in EPS_GRID]
    assert success_count(model, data, AttackSpec(name, 0.0)) == 0
    for smaller, larger in zip(counts, counts[1:]):
        assert larger >= smaller - 2, counts
    assert counts[-1] >= counts[0] + 32, counts


@pytest.mark.parametrize("eps", [0.01, 0.02, 0.03])
def test_pgd_at_least_as_strong_as_fgsm(eps: float, model: nn.Module, data) -> None:
    fgsm = success_count(model, data, AttackSpec("fgsm", eps))
    pgd = success_count(model, data, AttackSpec("pgd", eps))
    assert pgd >= fgsm - 2, (pgd, fgsm)


def test_deepfool_flips_within_a_generous_eps(model: nn.Module, data) -> None:
    result = run_attack(model, data[0], data[1], AttackSpec("deepfool", 0.1))
    assert float(result.success.float().mean()) >= 0.9
    # Minimal perturbations: far below the budget that FGSM spends on every pixel.
    assert float(result.linf.median()) < 0.1


def test_paper_sized_gaussian_noise_barely_changes_predictions(model: nn.Module, data) -> None:
    x, y = data
    for spec, std in ((paper_spec("gaussian"), (0.27, 0.26, 0.28)),
                      (AttackSpec("gaussian", 0.01), None)):
        result = run_attack(model, x, y, spec, pixel_std=std)
        assert int(result.success.sum()) <= 1
        assert float(result.linf.max()) < 0.01
    # ... while FGSM at the same pixel budget per coordinate is not harmless.
    assert success_count(model, data, AttackSpec("fgsm", 0.03)) >= 10


# ------------------------------------------------------------------------ black box
def numpy_forward(model: nn.Module):
    def forward(x: torch.Tensor) -> np.ndarray:
        assert not torch.is_grad_enabled(), "black-box attacks must not ask for gradients"
        return model(x).numpy()
    return forward


def scores_forward(model: nn.Module):
    """An ONNX-like classifier: only P(unsafe), wrapped into logits by the caller."""
    def forward(x: torch.Tensor):
        with torch.no_grad():
            return logits_from_scores(torch.softmax(model(x), 1)[:, 1].numpy())
    return forward


@pytest.mark.parametrize("name,queries,extra", [("square", 500, {}),
                                                ("spsa", 1000, {"samples": 8})])
def test_black_box_attacks_lower_accuracy_within_budget(
        name: str, queries: int, extra: dict, model: nn.Module, data) -> None:
    x, y = data
    spec = AttackSpec(name, 0.06, queries=queries, **extra)
    result = run_attack(numpy_forward(model), x, y, spec)
    assert_within(result, x)
    assert int(result.queries.max()) <= queries
    assert float(result.success.float().mean()) >= 0.5, int(result.success.sum())
    # A sample that was never fooled spent (nearly) the whole budget; fooled ones stopped.
    if bool((~result.success).any()):
        assert int(result.queries[~result.success].min()) > queries - 2 * 8 - 2
    with torch.no_grad():
        assert torch.equal(result.pred, model(result.x_adv).argmax(1))


def test_square_attacks_score_only_models(model: nn.Module, data) -> None:
    x, y = data[0][:32], data[1][:32]
    result = run_attack(scores_forward(model), x, y, AttackSpec("square", 0.06, queries=300))
    assert int(result.queries.max()) <= 300
    assert float(result.success.float().mean()) >= 0.3


def test_white_box_on_a_gradient_free_model_is_a_clear_error(model: nn.Module, data) -> None:
    with pytest.raises(ValueError, match="gradient"):
        run_attack(scores_forward(model), data[0][:4], data[1][:4], AttackSpec("pgd", 0.03))


def test_logits_from_scores() -> None:
    logits = logits_from_scores(np.array([0.0, 0.25, 1.0]))
    assert torch.isfinite(logits).all()
    assert torch.softmax(logits, 1)[:, 1].tolist() == pytest.approx([0.0, 0.25, 1.0], abs=1e-6)


# ----------------------------------------------------------------------------- specs
def test_canonical_strings() -> None:
    assert str(AttackSpec("pgd", 0.0314, steps=10, step_size=0.00784)) == \
        "pgd:eps=0.0314:steps=10:ss=0.00784:rs=1:seed=2023:pixel"
    assert str(AttackSpec("fgsm", 8 / 255)) == f"fgsm:eps={8 / 255!r}:seed=2023:pixel"
    assert str(AttackSpec("pgd", 0.04)) == "pgd:eps=0.04:steps=10:ss=0.01:rs=1:seed=2023:pixel"
    assert str(paper_spec("deepfool")) == \
        "deepfool:eps=0.01:steps=100:os=0.02:cand=2:seed=2023:paper"
    pgd = paper_spec("pgd")
    assert (pgd.steps, pgd.random_start, pgd.mode) == (100, True, "paper")
    assert pgd.step_size == pytest.approx(0.01 / 30)
    assert str(AttackSpec("square", 0.03)) == "square:eps=0.03:q=1000:seed=2023:pixel"
    # Defaults resolve on construction: explicit and implicit specs are the same condition.
    assert AttackSpec("pgd", 0.04) == AttackSpec("pgd", 0.04, steps=10, step_size=0.01,
                                                 random_start=True)
    assert str(AttackSpec("fgsm", -0.0)) == "fgsm:eps=0.0:seed=2023:pixel"


def test_parse_is_lenient_and_str_is_canonical() -> None:
    spec = AttackSpec.parse("pgd:paper:seed=7:eps=8/255:rs=0")
    assert spec == AttackSpec("pgd", 8 / 255, random_start=False, seed=7, mode="paper")
    assert AttackSpec.parse(str(spec)) == spec
    assert AttackSpec.parse("fgsm:eps=0.03") == AttackSpec("fgsm", 0.03)


spec_strategy = st.one_of(
    st.builds(AttackSpec, name=st.sampled_from(["gaussian", "fgsm"]),
              eps=st.floats(0, 1), seed=st.integers(0, 10**6),
              mode=st.sampled_from(["pixel", "paper"])),
    st.builds(AttackSpec, name=st.just("pgd"), eps=st.floats(0, 1),
              steps=st.none() | st.integers(1, 500),
              step_size=st.none() | st.floats(0, 1), random_start=st.none() | st.booleans(),
              seed=st.integers(0, 10**6), mode=st.sampled_from(["pixel", "paper"])),
    st.builds(AttackSpec, name=st.just("deepfool"), eps=st.floats(0, 1),
              steps=st.none() | st.integers(1, 500), overshoot=st.none() | st.floats(0, 1),
              candidates=st.none() | st.integers(2, 10)),
    st.builds(AttackSpec, name=st.just("square"), eps=st.floats(0, 1),
              queries=st.none() | st.integers(2, 10**5)),
    st.builds(AttackSpec, name=st.just("spsa"), eps=st.floats(0, 1),
              queries=st.none() | st.integers(100, 10**5), step_size=st.none() | st.floats(0, 1),
              samples=st.none() | st.integers(1, 49)),
)


@settings(max_examples=200, deadline=None)
@given(spec=spec_strategy)
def test_str_parse_round_trip(spec: AttackSpec) -> None:
    text = str(spec)
    back = AttackSpec.parse(text)
    assert back == spec and str(back) == text
    assert hash(back) == hash(spec)


@pytest.mark.parametrize("text,match", [
    ("", "non-empty"),
    ("cw:eps=0.1", "unknown attack"),
    ("pgd", "eps=... is required"),
    ("pgd:eps=0.1:foo=1", "unknown key"),
    ("pgd:eps=0.1:eps=0.2", "given twice"),
    ("pgd:eps=0.1:pixel:paper", "mode given twice"),
    ("pgd:eps=0.1:fast", "neither key=value nor a mode"),
    ("fgsm:eps=0.1:steps=3", "fgsm does not use steps"),
    ("pgd:eps=abc", "bad value for 'eps'"),
    ("pgd:eps=0.1:rs=2", "bad value for 'rs'"),
    ("pgd:eps=1.5", "<= 1"),
    ("pgd:eps=-0.1", ">= 0"),
    ("pgd:eps=nan", "finite"),
    ("deepfool:eps=0.1:cand=1", "candidates >= 2"),
    ("square:eps=0.1:q=1", "queries >= 2"),
    ("spsa:eps=0.1:q=10:n=8", "queries >= 18"),
])
def test_parse_errors_say_what_is_wrong(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AttackSpec.parse(text)


def test_spec_errors() -> None:
    with pytest.raises(ValueError, match="unknown attack"):
        AttackSpec("cw", 0.1)
    with pytest.raises(ValueError, match="mode"):
        AttackSpec("pgd", 0.1, mode="normalised")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the paper ran no square"):
        paper_spec("square")
    assert AttackSpec("gaussian", 3.0).eps == 3.0  # an L2 norm may exceed 1


def test_bad_inputs(model: nn.Module, data) -> None:
    x, y = data[0][:4], data[1][:4]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_attack(model, x * 2, y, AttackSpec("fgsm", 0.1))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        run_attack(model, x[:, :1], y, AttackSpec("fgsm", 0.1))
    with pytest.raises(ValueError, match="labels"):
        run_attack(model, x, y[:3], AttackSpec("fgsm", 0.1))
    with pytest.raises(ValueError, match="pixel_std"):
        run_attack(model, x, y, paper_spec("fgsm"), pixel_std=(0.2, 0.2))
    empty = run_attack(model, x[:0], y[:0], AttackSpec("pgd", 0.1))
    assert empty.x_adv.shape == (0, 3, 16, 16)


# ------------------------------------------------------------------------------- ART
@pytest.fixture(scope="module")
def art_classifier(model: nn.Module):
    pytest.importorskip("art", reason="adversarial-robustness-toolbox is not installed "
                                      "(pip install adversarial-robustness-toolbox)")
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(3, 16, 16),
                             nb_classes=2, clip_values=(0.0, 1.0), device_type="cpu")


@pytest.mark.parametrize("eps", [0.01, 0.03])
def test_fgsm_matches_art(eps: float, art_classifier, model: nn.Module, data) -> None:
    from art.attacks.evasion import FastGradientMethod

    x, y = data
    art_adv = FastGradientMethod(art_classifier, norm=np.inf, eps=eps).generate(
        x.numpy(), y.numpy())
    ours = run_attack(model, x, y, AttackSpec("fgsm", eps))
    assert float((ours.x_adv - torch.from_numpy(art_adv)).abs().max()) <= 1e-5
    with torch.no_grad():
        art_success = model(torch.from_numpy(art_adv)).argmax(1) != y
    assert int((art_success != ours.success).sum()) <= 2


@pytest.mark.parametrize("eps", [0.01, 0.02, 0.03])
def test_pgd_matches_art(eps: float, art_classifier, model: nn.Module, data) -> None:
    """Our PGD (defaults, random start off) is ART's PGD to float precision.

    ART is given the documented defaults written out here (10 steps, step eps/4), not read from
    the spec, so a changed default fails too. Mutations this catches (each moves some pixel by
    2 * eps, far beyond 1e-5): FGSM in place of PGD, 5 steps instead of 10, step size = eps, a
    random start that ignores ``random_start=False``.
    """
    from art.attacks.evasion import ProjectedGradientDescent

    x, y = data
    art_adv = ProjectedGradientDescent(
        art_classifier, norm=np.inf, eps=eps, eps_step=eps / 4, max_iter=10,
        num_random_init=0, batch_size=len(x), verbose=False).generate(x.numpy(), y.numpy())
    ours = run_attack(model, x, y, AttackSpec("pgd", eps, random_start=False))
    assert float((ours.x_adv - torch.from_numpy(art_adv)).abs().max()) <= 1e-5
    with torch.no_grad():
        art_success = model(torch.from_numpy(art_adv)).argmax(1) != y
    assert torch.equal(art_success, ours.success)


@pytest.mark.parametrize("eps", [0.02, 0.03])
def test_pgd_random_start_success_rate_matches_art(eps: float, art_classifier, model: nn.Module,
                                                   data) -> None:
    """With a random start the two draw different noise, so they are compared by success rate.

    Bound: 4 of 64 images (6 %). Measured here: equal rates at eps 0.01 to 0.03 over 3 ART
    seeds; FGSM in place of PGD is 16+ images weaker at eps 0.03 (rate 0.33 vs 0.58).
    """
    from art.attacks.evasion import ProjectedGradientDescent

    x, y = data
    art_adv = ProjectedGradientDescent(
        art_classifier, norm=np.inf, eps=eps, eps_step=eps / 4, max_iter=10,
        num_random_init=1, batch_size=len(x), verbose=False).generate(x.numpy(), y.numpy())
    with torch.no_grad():
        art_rate = int((model(torch.from_numpy(art_adv)).argmax(1) != y).sum())
    ours = run_attack(model, x, y, AttackSpec("pgd", eps))
    assert ours.spec.random_start
    assert abs(int(ours.success.sum()) - art_rate) <= 4


# ------------------------------------------------------------------------- foolbox
@pytest.mark.parametrize("eps", [0.01, 0.03, 1.0])
def test_deepfool_matches_foolbox(eps: float, model: nn.Module, data) -> None:
    """L-inf DeepFool against foolbox 3 (the library the paper's attacks ran on).

    Per image: the same success and the same adversarial pixels, so the same perturbation
    size; at eps 1.0 nothing is clipped, so the raw (minimal) perturbations are compared too.
    Mutations this catches: plain PGD in place of DeepFool (larger perturbations, other
    pixels), a dropped overshoot, one candidate class fewer or more on a 3+ class model.
    """
    fb = pytest.importorskip("foolbox", reason="foolbox 3 is a test-only reference "
                                               "(pip install foolbox==3.3.4; in the dev extra)")
    x, y = data
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    attack = fb.attacks.LinfDeepFoolAttack(steps=50, candidates=2, overshoot=0.02,
                                           loss="logits")
    raw, clipped, success = attack(fmodel, x, y, epsilons=eps)
    ours = run_attack(model, x, y, AttackSpec("deepfool", eps))
    assert torch.equal(success, ours.success)
    assert float((ours.x_adv - clipped).abs().max()) <= 1e-5
    fb_linf = (clipped - x).flatten(1).abs().amax(1)
    assert torch.allclose(ours.linf, fb_linf, atol=1e-5)
    if eps >= 1.0:  # unclipped: ours is foolbox's minimal perturbation itself
        assert torch.allclose(ours.linf, (raw - x).flatten(1).abs().amax(1), atol=1e-5)


# ------------------------------------------------------------ each attack's own bound
@pytest.mark.parametrize("name", [a for a in ATTACKS if a != "deepfool"])
def test_attacks_that_project_every_step_leave_nothing_to_the_final_clamp(
        name: str, model: nn.Module, data, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_attack's last projection must be a no-op for attacks that bound every step.

    The bounds test above cannot fail on its own (run_attack clamps at the end); this one
    records that last clamp's input. Mutation it catches: drop PGD's per-step ``clamp_(lo,
    hi)`` (or square/spsa's per-candidate clamp, or FGSM's projection): the final clamp then
    moves pixels. DeepFool is excluded: it is a minimal-perturbation attack and foolbox too
    clips its result to the eps ball at the end (see test_deepfool_matches_foolbox).
    """
    from pytest_unsafebench.robustness import attacks

    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = attacks._project

    def recording(x_adv: torch.Tensor, x: torch.Tensor, eps_pix: torch.Tensor,
                  box: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        before = x_adv.clone()
        out = real(x_adv, x, eps_pix, box)
        calls.append((before, out.clone()))
        return out

    monkeypatch.setattr(attacks, "_project", recording)
    x, y = data[0][:16], data[1][:16]
    eps = 0.03 if name != "gaussian" else 0.5
    run_attack(model, x, y, cheap(name, eps, seed=1))
    assert calls, "run_attack no longer projects its result"
    before, after = calls[-1]
    assert torch.equal(before, after), (
        f"{name}: the final clamp moved pixels by up to {float((before - after).abs().max())}")


# --------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_demo_classifier_pgd_beats_gaussian_noise(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    from pytest_unsafebench.classifiers.demo import load
    from pytest_unsafebench.dataset import load_dataset

    cache = tmp_path_factory.mktemp("attacks-demo")
    torch.set_num_threads(2)  # training the demo model: both cores
    try:
        clf = load(cache_dir=cache)
    finally:
        torch.set_num_threads(1)  # as the module's fixture set it
    records = load_dataset("demo", split="test", cache_dir=cache).records[:48]
    x = torch.from_numpy(np.stack([
        np.asarray(r.load_image().convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
        for r in records]))
    y = torch.tensor([int(r.is_unsafe) for r in records])
    with torch.no_grad():
        keep = clf.forward_pixels(x).argmax(1) == y
    x, y = x[keep][:16], y[keep][:16]
    assert len(y) >= 8
    eps = 8 / 255
    pgd = run_attack(clf.forward_pixels, x, y, AttackSpec("pgd", eps))
    # Noise with the L2 norm of a corner of the same L-inf ball: far more energy than PGD's.
    noise = run_attack(clf.forward_pixels, x, y,
                       AttackSpec("gaussian", eps * float(np.sqrt(x[0].numel()))))
    pgd_acc, noise_acc = (float(r.robust.float().mean()) for r in (pgd, noise))
    assert pgd_acc < noise_acc, (pgd_acc, noise_acc)
    assert float(pgd.linf.max()) <= eps + TOL
    assert all(p.grad is None for p in clf.model.parameters())


def test_fractions_dividing_by_zero_are_value_errors() -> None:
    with pytest.raises(ValueError, match=r"bad value for 'eps': eps = '1/0' divides by zero"):
        AttackSpec.parse("pgd:eps=1/0")
    with pytest.raises(ValueError, match=r"bad value for 'ss': step_size = '3/0' divides by zero"):
        AttackSpec.parse("pgd:eps=0.1:ss=3/0")


# --------------------------------------------------------------------- paper mode, end to end
PAPER_TOML = """
[tool.unsafebench]
categories = ["Hate", "Violence"]
sources = ["Lexica"]
split = "test"
suites = ["robustness"]
profile = "smoke"

[tool.unsafebench.robustness]
mode = "paper"
pool_size = 4
seeds = [2023]
attacks = ["fgsm", "pgd"]
evasions = []

[tool.unsafebench.classifiers.demo]
epochs = 1
"""

# A differentiable classifier without input_std: it always answers safe.
NOSTD = '''
import torch

from pytest_unsafebench import Coverage, Prediction


class NoStd:
    name = "nostd"
    fingerprint = "nostd-v1"
    coverage = Coverage.everything()
    supports_gradients = True

    def forward_pixels(self, x):
        return torch.stack([1.0 + 0 * x.mean((1, 2, 3)), 0 * x.mean((1, 2, 3))], dim=1)

    def predict(self, images):
        return [Prediction.from_score(0.1) for _ in images]


def load():
    return NoStd()
'''


@pytest.mark.slow
def test_paper_mode_attacks_the_demo_classifier_through_the_plugin(
        pytester: pytest.Pytester) -> None:
    """Paper mode on the bundled demo model runs (its input_std converts eps 0.01 to pixels);
    a gradient classifier without input_std gets a skip that says why, not a traceback."""
    import json

    pytester.makepyprojecttoml(PAPER_TOML)
    pytester.makepyfile(nostd=NOSTD)
    pytester.syspathinsert()
    out = pytester.path / "out.json"
    result = pytester.runpytest(
        "--unsafebench-classifier=demo,nostd:load", f"--unsafebench-cache-dir={pytester.path}",
        "--unsafebench-device=cpu", f"--unsafebench-json={out}", "-k", "test_robust_accuracy",
        "-p", "no:randomly", "-rs")
    cells = [f"{a}-{s}" for a in ("fgsm", "pgd") for s in ("Lexica", "all")]
    result.assert_outcomes(passed=len(cells), skipped=len(cells))
    result.stdout.fnmatch_lines(["*paper mode: fgsm's eps is in nostd:load's normalised-input "
                                 "units, but nostd:load declares no input_std*"])

    doc = json.loads(out.read_text())
    assert doc["config"]["robustness"]["mode"] == "paper"
    rows = [r for r in doc["rows"] if r["suite"] == "robustness"]
    gated = {(r["classifier"], f"{r['condition']}-{r['source']}"): r for r in rows
             if r["metric"] == "ra" and r["outcome"] != "info"}
    assert set(gated) == {(c, cell) for c in ("demo", "nostd:load") for cell in cells}
    for cell in cells:
        assert gated["demo", cell]["outcome"] == "passed"
        assert 0.0 <= gated["demo", cell]["value"] <= 1.0
        skipped = gated["nostd:load", cell]
        assert skipped["outcome"] == "skipped" and "input_std" in skipped["reason"]
    # eps 0.01 in normalised units is 0.01 * std = 0.0025 in pixels for the demo model
    # (std 0.25); FGSM's sign step reaches it exactly.
    linf = {r["condition"]: r["value"] for r in rows
            if r["classifier"] == "demo" and r["metric"] == "linf_max" and r["source"] == "all"}
    assert linf["fgsm"] == pytest.approx(0.01 * 0.25, abs=1e-6)
    assert 0.0 < linf["pgd"] <= 0.01 * 0.25 + 1e-6


# ---------------------------------------------------------- paper mode as foolbox ran it
def test_paper_box_lets_pixels_leave_0_1_as_foolboxs_bounds_did() -> None:
    """Paper mode clips to foolbox's (-3, 3) in normalised space (paper_box), not [0, 1]: a
    black image pushed darker goes below 0 by eps * std; the default box keeps it at 0."""
    from pytest_unsafebench.robustness.attacks import paper_box

    def forward(x: torch.Tensor) -> torch.Tensor:  # darker = more unsafe
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([10 * m, -10 * m], dim=1)

    x = torch.zeros(2, 3, 4, 4)
    y = torch.zeros(2, dtype=torch.long)
    std, mean = (0.25, 0.5, 0.2), (0.4, 0.4, 0.4)
    spec = paper_spec("fgsm")
    box = paper_box(mean, std)
    assert box == (tuple(m - 3 * s for m, s in zip(mean, std)),
                   tuple(m + 3 * s for m, s in zip(mean, std)))
    inside = run_attack(forward, x, y, spec, pixel_std=std)
    assert float(inside.x_adv.min()) == 0.0
    paper = run_attack(forward, x, y, spec, pixel_std=std, box=box)
    want = -0.01 * torch.tensor(std).view(1, 3, 1, 1).expand_as(x)
    torch.testing.assert_close(paper.x_adv, want)
    with pytest.raises(ValueError, match="box must be"):
        run_attack(forward, x, y, spec, pixel_std=std, box=((0.1, 0, 0), (1, 1, 1)))


def test_deepfool_on_a_rounded_rule_fails_where_the_paper_said_so() -> None:
    """SD_Filter's case: the paper's attacked model has its boundary at margin 0 (softmax of
    [-m, m]) while the decision is round(m, 3) > 0, i.e. m > 0.0005. DeepFool stops just past
    0, so judged by the rounded rule (``decide``) the Safe image stays Safe; attacking the rule's
    own logits would have succeeded."""
    def margin(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3)) - 0.5

    def paper_model(x: torch.Tensor) -> torch.Tensor:
        m = margin(x)
        return torch.softmax(torch.stack([-m, m], dim=1), dim=1)

    def own_rule(x: torch.Tensor) -> torch.Tensor:
        z = (margin(x) - 0.0005) / 0.01
        return torch.stack([-z / 2, z / 2], dim=1)

    x = torch.full((1, 3, 8, 8), 0.495)  # m = -0.005: Safe, 0.005 from the boundary
    y = torch.zeros(1, dtype=torch.long)
    spec = paper_spec("deepfool")
    unit = (1.0, 1.0, 1.0)  # eps 0.01 in these units is 0.01 in pixels: not binding here
    paper = run_attack(paper_model, x, y, spec, pixel_std=unit, decide=own_rule)
    assert 0 < float(margin(paper.x_adv)) < 0.0005  # past the softmax boundary ...
    assert not bool(paper.success[0])                  # ... but not past the rounded rule
    ours = run_attack(own_rule, x, y, spec, pixel_std=unit)
    assert bool(ours.success[0]) and float(margin(ours.x_adv)) > 0.0005
