"""Property: any recipe file and any `--set` values either build a valid RunSpec or raise ValueError with a
one-line message — never another exception, never a spec that breaks its own rules. No torch involved."""
from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmbench.config import RunSpec
from vmbench.recipe import RECIPE_KEYS, build_run_spec, parse_set

KEYS = st.one_of(st.sampled_from(RECIPE_KEYS), st.sampled_from(("seed", "device", "datasets", "bogus", "")),
                 st.text(min_size=1, max_size=12))
SCALARS = st.one_of(st.booleans(), st.integers(min_value=-10**20, max_value=10**20),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=5), SCALARS, max_size=2))


def _toml(value) -> str:
    """A TOML literal for `value` (the forms a user would type)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').encode("unicode_escape").decode() + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items() if k.isidentifier()) + "}"


def _outcome(fn):
    try:
        spec, recipe = fn()
    except ValueError as e:
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)
        return None
    assert isinstance(spec, RunSpec)
    RunSpec(**spec.to_dict())  # what was built passes its own validation again
    for name in ("epochs", "batch_size", "lr", "accum_steps"):
        value = getattr(spec, name)
        assert value > 0 and math.isfinite(value), (name, value)
    return spec


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(KEYS, st.one_of(VALUES, st.text(max_size=15))), max_size=4))
def test_set_values_build_a_spec_or_one_line_value_error(items):
    sets = [f"{k}={v if isinstance(v, str) and not v.startswith(('[', '{')) else _toml(v)}" for k, v in items]
    _outcome(lambda: build_run_spec("test_resnet", "shapes", "smoke", parse_set(sets), {}))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.dictionaries(KEYS, VALUES, max_size=5), st.text(max_size=40))
def test_recipe_files_build_a_spec_or_one_line_value_error(tmp_path, table, junk):
    lines = [f'"{k}" = {_toml(v)}' for k, v in table.items() if "\n" not in k and '"' not in k and "\\" not in k]
    path = tmp_path / "r.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _outcome(lambda: build_run_spec("test_resnet", "shapes", str(path), {}, {}))
    path.write_text(junk, encoding="utf-8")  # anything at all in the file
    _outcome(lambda: build_run_spec("test_resnet", "shapes", str(path), {}, {}))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(("epochs", "batch_size", "lr", "img_size")),
                       st.one_of(st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True)), max_size=4))
def test_flag_values_are_blamed_on_the_flag(flags):
    try:
        build_run_spec("test_resnet", "shapes", "smoke", {}, flags)
    except ValueError as e:
        assert str(e).startswith("--") and "recipe" not in str(e), str(e)
