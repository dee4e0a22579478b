"""The evoens_morph plugin's hooks: registers its providers with evoens."""

from __future__ import annotations

from collections.abc import Iterator

from evoens import Provider, hookimpl


@hookimpl
def evoens_register_providers() -> Iterator[Provider]:
    from evoens_morph.mutations import DESCRIPTIONS, OPERATORS

    # function-preserving transforms (morph-transforms): factory = the operator itself,
    # op(module, site, options, generator) -> (new_module, MorphReport); op.sites(module) lists sites
    for name, op in OPERATORS.items():
        yield Provider("mutation", name, op, DESCRIPTIONS[name])

    # ---- morph-ne: architecture neuroevolution providers go below this line ----
    # (same `mutation` contract: callable + .name, .exact, .sites(module); tests/evoens_morph/
    # test_morph_widen.py runs the conformance check on every registered `mutation` provider)
    from evoens_morph import ne_ops

    for name, op in ne_ops.OPERATORS.items():
        yield Provider("mutation", name, op, ne_ops.DESCRIPTIONS[name])
    from evoens_morph.ne_trainer import NEOptions, build_ne_trainer

    yield Provider(
        "trainer", "r2r_ne", build_ne_trainer, "block-level R2R neuroevolution with shared weights (Painter 2018)",
        options=NEOptions,
    )
    # ---- end morph-ne ----
