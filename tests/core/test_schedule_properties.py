"""Property-based checks of schedule inputs: any valid schedule is accepted as given, any invalid one is
refused."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctmtool.core.schedules import check_schedule, karras_sigmas, sample_ctm_indices
from ctmtool.errors import UserError
from ctmtool.jobs.plan import plan_explicit

levels = st.floats(min_value=1e-4, max_value=1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(levels, min_size=2, max_size=12, unique=True))
def test_strictly_decreasing_positive_schedules_are_accepted_unchanged(values):
    s = sorted(values, reverse=True)
    assert check_schedule(s).tolist() == s


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=0, max_size=8))
def test_anything_else_is_refused_with_a_value_error(values):
    ok = (len(values) >= 2 and all(v == v and 0 < v < float("inf") for v in values)
          and all(b < a for a, b in zip(values, values[1:], strict=False)))
    if ok:
        check_schedule(values)
    else:
        with pytest.raises(ValueError):
            check_schedule(values)


@settings(max_examples=100, deadline=None)
@given(st.lists(levels, min_size=1, max_size=6))
def test_cli_schedules_that_do_not_decrease_are_user_errors(values):
    net = type("N", (),
               {"sigma_min": 0.002, "sigma_max": 80.0, "gaussian_source": True, "has_density": True})()
    model = type("M", (), {"kind": "ctm", "is_trajectory": True, "net": net})()
    s = list(values) + [values[-1]]  # a repeated level never decreases
    with pytest.raises(UserError, match="`sigmas`"):
        plan_explicit(model, solver="gamma", sigmas=s)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 60), st.floats(1e-4, 1.0), st.floats(2.0, 500.0), st.floats(1.0, 20.0))
def test_karras_grid_is_strictly_decreasing_between_its_endpoints(n, smin, smax, rho):
    s = karras_sigmas(n, smin, smax, rho)
    assert s[0] == smax and s[-1] == smin and bool((s[1:] < s[:-1]).all())


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 40), st.integers(1, 39), st.integers(1, 64), st.integers(0, 2**31 - 1))
def test_ctm_indices_always_ordered(grid, max_steps, batch, seed):
    max_steps = min(max_steps, grid - 1)
    t, u, s, k = sample_ctm_indices(batch, grid, max_steps, generator=torch.Generator().manual_seed(seed))
    assert 1 <= k <= max_steps and bool((t < u).all()) and bool((u <= s).all()) and bool((s < grid).all())
    assert bool((u - t == k).all())
