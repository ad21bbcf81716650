"""Tests of the denoising-diffusion-codebook part of dlmath.diffusion (chapter 30): the DDPM
schedule and posterior in Su's notation, exact x0-predictors, DDCM generation and encoding,
selection rules, the energy distance and the Gaussian distortion-rate function."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlmath import diffusion as D

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gauss_setup(d=8, T=20):
    s = D.vp_schedule(T)
    lam = 1.0 / (1.0 + torch.arange(d, dtype=F64))
    return s, lam, D.gaussian_x0_predictor(torch.zeros(d, dtype=F64), lam, s)


RING = D.GaussianMixture(torch.ones(4, dtype=F64),
                         torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -2.0]]),
                         0.2 * torch.ones(4, dtype=F64))


# -- schedule and posterior -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_identities(kind):
    s = D.vp_schedule(50, kind)
    assert s.T == 50 and s.alpha.shape == (51,) and s.alpha.dtype == F64
    assert torch.allclose(s.alpha**2 + s.beta**2, torch.ones(51, dtype=F64), atol=1e-15)
    assert torch.allclose(s.abar**2 + s.bbar**2, torch.ones(51, dtype=F64), atol=1e-15)
    assert torch.allclose(torch.cumprod(s.alpha, 0), s.abar, rtol=1e-12, atol=1e-15)
    assert s.abar[0] == 1 and s.bbar[0] == 0 and (s.abar[1:] < s.abar[:-1]).all()


def test_cosine_schedule_endpoints_and_small_t_accuracy():
    s = D.vp_schedule(100)
    assert abs(float(s.abar[-1])) < 1e-16 and float(s.bbar[-1]) == 1.0
    # beta_1 = sin(pi / 200) exactly (no cancellation in 1 - alpha_1^2)
    assert float(s.beta[1]) == pytest.approx(math.sin(math.pi / 200), rel=1e-15)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2000))
def test_cosine_schedule_is_finite_and_alpha_T_is_relatively_accurate(T):
    s = D.vp_schedule(T)
    assert all(torch.isfinite(v).all() for v in (s.alpha, s.beta, s.abar, s.bbar))
    assert (s.beta <= 1).all()
    # alpha_T = cos(pi/2) / cos(pi/2 (T-1)/T), a tiny number that 1 - beta_T^2 cannot resolve
    ref = math.cos(math.pi / 2) / math.cos(math.pi / 2 * (T - 1) / T)
    assert float(s.alpha[-1]) == pytest.approx(ref, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.floats(0.0, 1.0), st.sampled_from(["cosine", "linear"]))
def test_posterior_is_consistent_with_the_marginals(T, frac, kind):
    # if x_t ~ N(abar_t x0, bbar_t^2), then a_t x_t + b_t x0 + sigma_t eps has the law of x_{t-1}:
    # N(abar_{t-1} x0, bbar_{t-1}^2)
    if kind == "linear" and T < 21:
        T += 21
    s = D.vp_schedule(T, kind)
    a, b, sigma = D.ddpm_posterior_coefficients(s)
    t = 1 + int(frac * (T - 1))
    assert float(a[t] * s.abar[t] + b[t]) == pytest.approx(float(s.abar[t - 1]), abs=1e-13)
    assert float(a[t]**2 * s.bbar[t]**2 + sigma[t]**2) == pytest.approx(float(s.bbar[t - 1]**2),
                                                                          abs=1e-13)
    # and the regression coefficient of x_{t-1} on x_t: Cov / Var = alpha_t bbar_{t-1}^2 / bbar_t^2
    assert float(a[t] * s.bbar[t]**2) == pytest.approx(float(s.alpha[t] * s.bbar[t - 1]**2),
                                                       abs=1e-13)


def test_posterior_first_step_and_padding():
    a, b, sigma = D.ddpm_posterior_coefficients(D.vp_schedule(10))
    assert float(a[1]) == 0 and float(sigma[1]) == 0
    assert float(b[1]) == pytest.approx(1.0, abs=1e-15)
    assert all(math.isnan(float(v[0])) for v in (a, b, sigma))
    assert (sigma[2:] > 0).all() and (b[1:] > 0).all()


def test_schedule_bad_input():
    with pytest.raises(ValueError, match="T"):
        D.vp_schedule(0)
    with pytest.raises(TypeError, match="T"):
        D.vp_schedule(10.0)
    with pytest.raises(ValueError, match="kind"):
        D.vp_schedule(10, "sigmoid")
    with pytest.raises(ValueError, match="T must be >= 21"):
        D.vp_schedule(10, "linear")
    with pytest.raises(TypeError, match="sched"):
        D.ddpm_posterior_coefficients((1, 2, 3))


# -- x0-predictors -------------------------------------------------------------------------

def test_gaussian_predictor_matches_the_mixture_posterior_per_coordinate():
    s = D.vp_schedule(30)
    m = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    v = torch.tensor([0.3, 1.0, 4.0], dtype=F64)
    den = D.gaussian_x0_predictor(m, v, s)
    x = torch.randn(7, 3, generator=_gen(0), dtype=F64)
    for t in (1, 13, 30):
        got = den(x, t)
        for i in range(3):
            one = D.GaussianMixture([1.0], [float(m[i])], [math.sqrt(float(v[i]))])
            ref = one.posterior(x[:, i], float(s.abar[t]), float(s.bbar[t])).data_mean
            assert torch.allclose(got[:, i], ref, atol=1e-13)


def test_gmm_predictor_is_the_posterior_mean():
    s = D.vp_schedule(30)
    den = D.gmm_x0_predictor(RING, s)
    x = torch.randn(5, 2, generator=_gen(1), dtype=F64)
    for t in (1, 15, 30):
        ref = RING.posterior(x, float(s.abar[t]), float(s.bbar[t])).data_mean
        assert torch.equal(den(x, t), ref)


def test_gmm_predictor_matches_the_closed_form_written_out():
    # unequal weights and widths in 2-D, so the normaliser v_k^{-d/2} of each component matters:
    # E[x0 | x_t] = sum_k r_k (mu_k + abar s_k^2 / v_k (x - abar mu_k)),
    # v_k = abar^2 s_k^2 + bbar^2, r_k propto pi_k v_k^{-1} exp(-|x - abar mu_k|^2 / (2 v_k))
    pi = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    mu = torch.tensor([[1.5, -0.5], [-1.0, 2.0], [0.0, 0.3]], dtype=F64)
    sd = torch.tensor([0.1, 0.7, 0.3], dtype=F64)
    gmm = D.GaussianMixture(pi, mu, sd)
    s = D.vp_schedule(40)
    den = D.gmm_x0_predictor(gmm, s)
    x = 1.5 * torch.randn(30, 2, generator=_gen(35), dtype=F64)
    for t in (1, 2, 17, 39, 40):
        ab, bb = float(s.abar[t]), float(s.bbar[t])
        v = ab**2 * sd**2 + bb**2                                     # (3,)
        diff = x[:, None] - ab * mu                                   # (30, 3, 2)
        logr = pi.log() - torch.log(v) - (diff**2).sum(-1) / (2 * v)
        r = torch.softmax(logr, dim=-1)
        ref = (r[..., None] * (mu + (ab * sd**2 / v)[:, None] * diff)).sum(1)
        assert torch.allclose(den(x, t), ref, rtol=0, atol=1e-12), t


def test_predictor_bad_input():
    s = D.vp_schedule(5)
    with pytest.raises(ValueError, match="var must be > 0"):
        D.gaussian_x0_predictor([0.0, 0.0], [1.0, 0.0], s)
    with pytest.raises(ValueError, match="same shape"):
        D.gaussian_x0_predictor([0.0], [1.0, 2.0], s)
    with pytest.raises(ValueError, match="mean"):
        D.gaussian_x0_predictor([[0.0]], [[1.0]], s)
    with pytest.raises(TypeError, match="gmm"):
        D.gmm_x0_predictor("ring", s)


# -- codebooks, generation, encoding -------------------------------------------------------

def test_make_codebooks_shapes_sharing_and_seed():
    C = D.make_codebooks(6, 4, 3, _gen(0))
    assert C.shape == (7, 4, 3) and C.dtype == F64
    assert not torch.equal(C[1], C[2])
    assert torch.equal(C, D.make_codebooks(6, 4, 3, _gen(0)))
    S = D.make_codebooks(6, 4, 3, _gen(0), shared=True)
    assert S.shape == (7, 4, 3) and all(torch.equal(S[0], S[t]) for t in range(7))
    with pytest.raises(ValueError, match="K"):
        D.make_codebooks(6, 0, 3)


def test_ddpm_sample_is_ddcm_with_the_same_noise_as_codewords():
    s = D.vp_schedule(25)
    den = D.gmm_x0_predictor(RING, s)
    n = 6
    g = _gen(3)
    x_T = torch.randn(n, 2, generator=g, dtype=F64)
    out = D.ddpm_sample(den, s, x_T, _gen(4))
    # replay: the same noises, in the sampler's order t = T..1, stored as codebooks with K = n
    g2 = _gen(4)
    C = torch.empty(s.T + 1, n, 2, dtype=F64)
    C[0] = x_T
    for t in range(s.T, 0, -1):
        C[t] = torch.randn(n, 2, generator=g2, dtype=F64)
    idx = torch.arange(n).repeat(s.T + 1, 1).T.contiguous()
    assert torch.allclose(D.ddcm_generate(den, s, C, idx), out, atol=1e-14)


@pytest.mark.parametrize("rule,tau", [("is", 0.0), ("post", 0.0), ("is", 1.0), ("post", 0.5)])
@pytest.mark.parametrize("K", [2, 16])
def test_encode_decode_round_trip_is_bit_exact(rule, tau, K):
    s, lam, den = _gauss_setup()
    x0 = torch.randn(10, 8, generator=_gen(5), dtype=F64) * lam.sqrt()
    C = D.make_codebooks(s.T, K, 8, _gen(6))
    idx, x_hat = D.ddcm_encode(den, s, C, x0, rule, tau, start=1, generator=_gen(7))
    assert idx.shape == (10, s.T + 1) and idx.dtype == torch.int64
    assert (idx[:, 0] == 1).all() and (idx[:, 1] == 0).all()
    assert idx.min() >= 0 and idx.max() < K
    assert torch.equal(D.ddcm_generate(den, s, C, idx), x_hat)


def test_round_trip_with_the_mixture_denoiser():
    s = D.vp_schedule(30)
    den = D.gmm_x0_predictor(RING, s)
    x0 = RING.sample(12, _gen(8))
    C = D.make_codebooks(s.T, 8, 2, _gen(9))
    idx, x_hat = D.ddcm_encode(den, s, C, x0)
    assert torch.equal(D.ddcm_generate(den, s, C, idx), x_hat)


def _posterior_x1_moments(s, x0: float, xT: float):
    """Mean and variance of q(x_1 | x_T, x_0) for 1-D data, by Gaussian conditioning."""
    T = s.T
    gam = float(s.abar[T] / s.abar[1] * s.bbar[1] ** 2)  # Cov(x_1, x_T | x_0)
    vT = float(s.bbar[T]) ** 2
    return (float(s.abar[1]) * x0 + gam * (xT - float(s.abar[T]) * x0) / vT,
            float(s.bbar[1]) ** 2 - gam**2 / vT)


@pytest.mark.parametrize("seed", [13, 21])
def test_corrected_softmax_encoder_samples_the_posterior_chain(seed):
    # with rule "is" at temperature 1 and a large codebook every step is (nearly) a draw from
    # the posterior step, so x_1 ~ q(x_1 | x_T, x_0); this sees the scale b_t / sigma_t of c_t,
    # which the argmax rule cannot. The post's weights miss by far.
    s = D.vp_schedule(10)
    den = D.gaussian_x0_predictor(torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64), s)
    C = D.make_codebooks(10, 4096, 1, _gen(seed))
    i0 = int(C[0, :, 0].abs().argmin())
    x0 = torch.full((1000, 1), 1.2, dtype=F64)
    m, v = _posterior_x1_moments(s, 1.2, float(C[0, i0, 0]))
    gain1 = float(s.abar[1] / (s.abar[1] ** 2 + s.bbar[1] ** 2))
    out = {}
    for rule in ("is", "post"):
        _, xh = D.ddcm_encode(den, s, C, x0, rule, 1.0, start=i0, generator=_gen(seed + 1))
        x1 = xh[:, 0] / gain1
        out[rule] = (float((x1.mean() - m) / math.sqrt(v / 1000)), float(x1.var() / v))
    assert abs(out["is"][0]) < 4 and 0.85 < out["is"][1] < 1.25, out
    assert abs(out["post"][0]) > 20 and out["post"][1] > 1.8, out


def test_encoder_spends_every_index_from_T_to_2():
    # T - 1 indices carry information: columns 2..T vary with the target, column 1 is unused
    s, lam, den = _gauss_setup(d=8, T=15)
    x0 = torch.randn(12, 8, generator=_gen(30), dtype=F64) * lam.sqrt()
    C = D.make_codebooks(s.T, 16, 8, _gen(31))
    # (not checked for "post" at tau = 0: the nearest codeword is often the shortest one
    # whatever the target, so some columns are constant; that is the defect of chapter 30)
    for rule, tau in (("is", 0.0), ("is", 1.0)):
        idx, _ = D.ddcm_encode(den, s, C, x0, rule, tau, generator=_gen(32))
        assert (idx[:, 1] == 0).all()
        assert all(len(set(idx[:, t].tolist())) > 1 for t in range(2, s.T + 1)), (rule, idx)


def test_encoder_keeps_float64_and_accepts_float32_targets():
    s, lam, den = _gauss_setup(d=4, T=10)
    C = D.make_codebooks(s.T, 4, 4, _gen(33))
    x0 = (torch.randn(3, 4, generator=_gen(34)) * lam.sqrt().float())
    idx, xh = D.ddcm_encode(den, s, C, x0)
    assert xh.dtype == F64 and torch.equal(D.ddcm_generate(den, s, C, idx), xh)
    idx32 = idx.to(torch.int32)
    assert torch.equal(D.ddcm_generate(den, s, C, idx32), xh)


def test_argmax_encoding_beats_random_indices_and_improves_with_K():
    s, lam, den = _gauss_setup(d=16, T=40)
    x0 = torch.randn(20, 16, generator=_gen(10), dtype=F64) * lam.sqrt()
    errs = []
    for K in (2, 16, 128):
        C = D.make_codebooks(s.T, K, 16, _gen(11))
        _, x_hat = D.ddcm_encode(den, s, C, x0)
        errs.append(float(((x_hat - x0) ** 2).mean()))
        rand = torch.randint(K, (20, s.T + 1), generator=_gen(12))
        rand_err = float(((D.ddcm_generate(den, s, C, rand) - x0) ** 2).mean())
        assert errs[-1] < 0.5 * rand_err
        bits = (s.T - 1) * math.log2(K)
        assert errs[-1] >= D.gaussian_distortion_rate(lam, bits)
    assert errs[0] > errs[1] > errs[2]


def test_encode_and_generate_bad_input():
    s, lam, den = _gauss_setup()
    C = D.make_codebooks(s.T, 4, 8, _gen(0))
    x0 = torch.zeros(3, 8, dtype=F64)
    with pytest.raises(ValueError, match="x0"):
        D.ddcm_encode(den, s, C, torch.zeros(3, 5, dtype=F64))
    with pytest.raises(ValueError, match="codebooks"):
        D.ddcm_encode(den, s, C[:-1], x0)
    with pytest.raises(ValueError, match="rule"):
        D.ddcm_encode(den, s, C, x0, rule="argmax")
    with pytest.raises(ValueError, match="temperature"):
        D.ddcm_encode(den, s, C, x0, temperature=-1.0)
    with pytest.raises(ValueError, match="start"):
        D.ddcm_encode(den, s, C, x0, start=4)
    with pytest.raises(ValueError, match="x0"):
        D.ddcm_encode(den, s, C, torch.full((3, 8), math.nan, dtype=F64))
    idx = torch.zeros(3, s.T + 1, dtype=torch.int64)
    with pytest.raises(TypeError, match="idx"):
        D.ddcm_generate(den, s, C, idx.double())
    with pytest.raises(ValueError, match="idx must have shape"):
        D.ddcm_generate(den, s, C, idx[:, :-1])
    with pytest.raises(ValueError, match=r"\[0, K\)"):
        D.ddcm_generate(den, s, C, idx + 4)


# -- selection rules -----------------------------------------------------------------------

def test_selection_logits_match_distances_and_inner_products():
    C = torch.randn(50, 6, generator=_gen(13), dtype=F64)
    c = torch.randn(4, 6, generator=_gen(14), dtype=F64)
    inner = D.selection_logits(C, c, "is")
    post = D.selection_logits(C, c, "post")
    assert torch.allclose(inner, torch.einsum("kd,nd->nk", C, c), atol=1e-13)
    dist2 = torch.cdist(c, C) ** 2
    assert torch.allclose(post, -0.5 * dist2 + 0.5 * (c**2).sum(-1, keepdim=True), atol=1e-12)
    # a batch of codebooks equals one call per codebook
    B = torch.randn(4, 50, 6, generator=_gen(15), dtype=F64)
    batched = D.selection_logits(B, c, "post")
    assert torch.allclose(batched, torch.stack([D.selection_logits(B[i], c[i], "post")
                                                for i in range(4)]), atol=1e-13)


def test_selection_weights_normalised_one_hot_limit_and_ties():
    C = torch.randn(30, 5, generator=_gen(16), dtype=F64)
    c = torch.randn(3, 5, generator=_gen(17), dtype=F64)
    for rule in ("is", "post"):
        w = D.selection_weights(C, c, rule, 0.7)
        assert torch.allclose(w.sum(-1), torch.ones(3, dtype=F64), atol=1e-14) and (w >= 0).all()
        hard = D.selection_weights(C, c, rule, 0.0)
        best = D.selection_logits(C, c, rule).argmax(-1)
        assert torch.equal(hard.argmax(-1), best)
        assert torch.equal(hard.sum(-1), torch.ones(3, dtype=F64))
        assert torch.allclose(D.selection_weights(C, c, rule, 1e-6), hard, atol=1e-12)
    # ties: duplicated best codeword -> the first index at zero temperature, equal split above
    Ct = torch.tensor([[0.0, 1.0], [2.0, 0.0], [2.0, 0.0]], dtype=F64)
    ct = torch.tensor([1.0, 0.0], dtype=F64)
    assert D.selection_weights(Ct, ct, "is", 0.0).tolist() == [0.0, 1.0, 0.0]
    w = D.selection_weights(Ct, ct, "is", 1.0)
    assert float(w[1]) == pytest.approx(float(w[2]), abs=1e-15)


def test_selection_weights_survive_huge_scores():
    C = torch.randn(10, 3, generator=_gen(18), dtype=F64)
    w = D.selection_weights(C, torch.tensor([1e150, 0.0, 0.0], dtype=F64), "is", 1.0)
    assert torch.isfinite(w).all() and float(w.sum()) == pytest.approx(1.0)
    assert int(w.argmax()) == int(C[:, 0].argmax())


@settings(max_examples=8, deadline=None)
@given(st.floats(-1.0, 1.0), st.floats(-1.0, 1.0))
def test_selection_laws_converge_to_the_stated_gaussians(c1, c2):
    C = torch.randn(40_000, 2, generator=_gen(19), dtype=F64)
    c = torch.tensor([c1, c2], dtype=F64)
    for rule, tau, m_lim, v_lim in (("is", 1.0, c, 1.0), ("post", 1.0, c / 2, 0.5),
                                    ("is", 2.0, c / 2, 1.0), ("post", 3.0, c / 4, 0.75)):
        w = D.selection_weights(C, c, rule, tau)
        mean = w @ C
        var = w @ (C - mean) ** 2
        assert (mean - m_lim).abs().max() < 0.06 and (var - v_lim).abs().max() < 0.08


def test_selection_bad_input():
    C = torch.randn(4, 3, dtype=F64)
    with pytest.raises(ValueError, match="codebook"):
        D.selection_logits(C, torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="needs c of shape"):
        D.selection_logits(torch.randn(2, 4, 3, dtype=F64), torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="rule"):
        D.selection_logits(C, torch.zeros(3, dtype=F64), "softmax")
    with pytest.raises(TypeError, match="codebook"):
        D.selection_logits(torch.ones(4, 3, dtype=torch.int64), torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="temperature"):
        D.selection_weights(C, torch.zeros(3, dtype=F64), "is", -0.1)
    # non-finite input is refused by name, not turned into NaN weights
    with pytest.raises(ValueError, match="c must be finite"):
        D.selection_weights(C, torch.tensor([math.nan, 0.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="codebook must be finite"):
        D.selection_logits(torch.full((4, 3), math.inf, dtype=F64), torch.zeros(3, dtype=F64))


# -- energy distance and the distortion-rate function --------------------------------------

def test_energy_distance_matches_scipy_in_one_dimension():
    from scipy.stats import energy_distance

    x = torch.randn(200, generator=_gen(20), dtype=F64)
    y = 0.5 + 2 * torch.randn(150, generator=_gen(21), dtype=F64)
    assert D.energy_distance(x, y) == pytest.approx(energy_distance(x.numpy(), y.numpy()),
                                                    rel=1e-12)


def test_energy_distance_basic_properties():
    x = torch.randn(100, 3, generator=_gen(22), dtype=F64)
    y = torch.randn(120, 3, generator=_gen(23), dtype=F64) + torch.tensor([1.0, 0.0, 0.0])
    assert D.energy_distance(x, x) == 0.0
    assert D.energy_distance(x, y) == pytest.approx(D.energy_distance(y, x), rel=1e-13)
    assert D.energy_distance(x, y) > 0.5
    with pytest.raises(ValueError, match="same dimension"):
        D.energy_distance(x, y[:, :2])
    with pytest.raises(ValueError, match="x"):
        D.energy_distance(torch.zeros(2, 2, 2), y)


def test_energy_distance_is_homogeneous_and_survives_extreme_scales():
    # D(s x, s y) = sqrt(s) D(x, y); at s = 1e200 the squares overflow and at 1e-200 they underflow
    # unless the samples are rescaled first
    x = torch.randn(40, 2, generator=_gen(24), dtype=F64)
    y = torch.randn(30, 2, generator=_gen(25), dtype=F64) + 0.7
    ref = D.energy_distance(x, y)
    for s in (1e-200, 1e-3, 7.0, 1e200):
        assert D.energy_distance(s * x, s * y) == pytest.approx(math.sqrt(s) * ref, rel=1e-12), s
    assert D.energy_distance(torch.zeros(3, 2), torch.zeros(4, 2)) == 0.0


def _distortion_by_root_finding(lam, R):
    from scipy.optimize import brentq

    lam = np.asarray(lam, dtype=float)
    pos = lam[lam > 0]
    f = lambda lt: np.maximum(0, 0.5 * (np.log2(pos) - lt)).sum() - R  # noqa: E731
    lt = brentq(f, np.log2(pos.min()) - 2 * R - 1, np.log2(pos.max()), xtol=1e-14)
    return np.minimum(2.0**lt, lam).mean()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1e-3, 10.0), min_size=1, max_size=12), st.floats(0.0, 40.0))
def test_distortion_rate_matches_root_finding(lam, R):
    got = D.gaussian_distortion_rate(torch.tensor(lam, dtype=F64), R)
    if R == 0:
        assert got == pytest.approx(np.mean(lam), rel=1e-14)
    else:
        assert got == pytest.approx(_distortion_by_root_finding(lam, R), rel=1e-9)
    assert 0 < got <= np.mean(lam) * (1 + 1e-14)


def test_distortion_rate_closed_forms_and_monotonicity():
    # equal variances: D = lam 2^{-2R/d}
    assert D.gaussian_distortion_rate(torch.full((4,), 2.0), 6.0) == pytest.approx(2.0 * 2**-3)
    lam = torch.tensor([4.0, 1.0, 0.0, 0.25], dtype=F64)
    vals = [D.gaussian_distortion_rate(lam, R) for R in np.linspace(0, 20, 41)]
    assert all(b < a for a, b in zip(vals[:-1], vals[1:], strict=True))
    assert D.gaussian_distortion_rate(torch.zeros(3), 5.0) == 0.0
    # one bit on the largest of unequal variances: theta = 4 / 4 = 1 -> (1 + 1 + 0 + 0.25) / 4
    assert D.gaussian_distortion_rate(lam, 1.0) == pytest.approx(2.25 / 4, rel=1e-14)
    with pytest.raises(ValueError, match="variances"):
        D.gaussian_distortion_rate(torch.tensor([1.0, -1.0]), 1.0)
    with pytest.raises(ValueError, match="bits"):
        D.gaussian_distortion_rate(torch.ones(2), -1.0)


# -- bad inputs (tools/bad_inputs.py) ----------------------------------------------------------

def test_samplers_refuse_bad_den_generator_and_codebooks():
    s, _, den = _gauss_setup(d=2, T=6)
    C = D.make_codebooks(6, 4, 2, _gen(0))
    x = torch.zeros(3, 2, dtype=F64)
    idx = torch.zeros(3, 7, dtype=torch.int64)
    with pytest.raises(TypeError, match="den"):
        D.ddpm_sample(None, s, x, _gen(1))
    with pytest.raises(TypeError, match="generator"):
        D.ddpm_sample(den, s, x, 1)
    with pytest.raises(TypeError, match="den"):
        D.ddcm_generate("den", s, C, idx)
    with pytest.raises(TypeError, match="den"):
        D.ddcm_encode(3, s, C, x)
    with pytest.raises(TypeError, match="generator"):
        D.ddcm_encode(den, s, C, x, temperature=1.0, generator=4)
    bad = C.clone()
    bad[3, 1, 0] = math.nan
    with pytest.raises(ValueError, match="codebooks must be finite"):
        D.ddcm_generate(den, s, bad, idx)
    with pytest.raises(ValueError, match="codebooks must be finite"):
        D.ddcm_encode(den, s, bad, x)


def test_selection_scores_promote_mixed_dtypes():
    """A float32 target with a float64 codebook (or the reverse) computes in float64, as
    ``c + codebook`` would, instead of raising inside the matrix product."""
    g = torch.Generator().manual_seed(3)
    C, c = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g)
    ref = D.selection_logits(C, c.double(), "post")
    for out in (D.selection_logits(C, c, "post"), D.selection_logits(C.float(), c.double(),
                                                                      "post")):
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    assert D.selection_weights(C, c).dtype == torch.float64


# -- referee findings --------------------------------------------------------------------------

def test_selection_weights_tiny_temperature_is_one_hot_not_nan():
    gen = torch.Generator().manual_seed(0)
    C = torch.randn(4, 3, generator=gen)
    c = torch.randn(3, generator=gen) * 5
    hard = D.selection_weights(C.double(), c.double(), "is", 0.0)
    for dt, tau in ((torch.float16, 1e-4), (torch.float64, 1e-310), (torch.float32, 1e-30)):
        w = D.selection_weights(C.to(dt), c.to(dt), "is", tau)
        assert w.dtype == dt and torch.equal(w.double(), hard)
