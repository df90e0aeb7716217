"""The sidebar edit as plain data, and the gpt.edit.Edits it means (pure: no st.*, no caches).

A spec is a dict {"how": "zero" | "mean", "heads": ((layer, head), ...), "mlp": (layer, ...),
"neurons": (layer, (index, ...))}, plus "sae": (SAE folder, feature, "ablate" | "steer", alpha)
while an SAE feature is used, kept in session_state so it survives reruns and model changes;
the Edits is rebuilt from it on every run (see app.interventions).
"""
from __future__ import annotations

from typing import Any, Sequence

from gpt.edit import Edits

FEATURE_MODES = ("ablate", "steer")

EMPTY: dict[str, Any] = {"how": "zero", "heads": (), "mlp": (), "neurons": (0, ())}


def parse_neurons(text: str, d_mlp: int) -> tuple[tuple[int, ...], str | None]:
    """Comma-separated neuron indices -> (sorted unique indices, None), or ((), message) saying
    what to fix. An empty text means no neurons."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    out: list[int] = []
    for p in parts:
        try:
            i = int(p)
        except ValueError:
            return (), f"Neurons: {p!r} is not a whole number; list indices like 3, 17, 200."
        if not 0 <= i < d_mlp:
            return (), f"Neurons: {i} is outside this layer's 0..{d_mlp - 1}; remove it or pick a smaller index."
        out.append(i)
    return tuple(sorted(set(out))), None


def clamp(spec: dict[str, Any], n_layer: int, n_head: int, d_mlp: int) -> dict[str, Any]:
    """`spec` without the parts a model of this shape does not have (another model was chosen)."""
    layer, idx = spec.get("neurons", (0, ()))
    keep_neurons = (layer, tuple(i for i in idx if i < d_mlp)) if layer < n_layer else (0, ())
    return {"how": spec.get("how", "zero"),
            "heads": tuple((l, h) for l, h in spec.get("heads", ()) if l < n_layer and h < n_head),
            "mlp": tuple(l for l in spec.get("mlp", ()) if l < n_layer),
            "neurons": keep_neurons}


def feature_edit(sae: Any, feature: int, mode: str, alpha: float) -> Edits:
    """An SAE feature's edit: "ablate" subtracts its decoder contribution where it fires, "steer"
    adds alpha × its decoder direction at every position (gpt.sae)."""
    from gpt.sae import ablate_feature_edit, steer_feature_edit

    if mode not in FEATURE_MODES:
        raise ValueError(f"an SAE feature is used to {' or '.join(FEATURE_MODES)}, not {mode!r}")
    return ablate_feature_edit(sae, int(feature)) if mode == "ablate" else steer_feature_edit(sae, int(feature), alpha)


def build(spec: dict[str, Any] | None, ref: Sequence[int] | None = None, sae: Any = None) -> Edits | None:
    """The Edits of `spec` (None when it ablates nothing). For how="mean", `ref` (the prompt's ids)
    is the reference batch: a fixed mean that KV-cache generation can use too. `sae` is the loaded
    gpt.sae.SAE that spec["sae"] names (its feature's edit comes last); None leaves that part out."""
    if not spec:
        return None
    how = spec.get("how", "zero")
    r = list(ref) if how == "mean" and ref is not None else None
    e = Edits()
    by_layer: dict[int, list[int]] = {}
    for l, h in spec.get("heads", ()):
        by_layer.setdefault(int(l), []).append(int(h))
    for l in sorted(by_layer):
        e = e.ablate_heads(l, sorted(by_layer[l]), how, r)
    for l in sorted(spec.get("mlp", ())):
        e = e.ablate_mlp(int(l), how, r)
    layer, idx = spec.get("neurons", (0, ()))
    if idx:
        e = e.ablate_neurons(int(layer), list(idx), how, r)
    if spec.get("sae") and sae is not None:
        _folder, f, mode, alpha = spec["sae"]
        e = e + feature_edit(sae, int(f), mode, float(alpha))
    return e if e else None


def banner_text(edit: Edits | None) -> str | None:
    """What the banner says, e.g. "2 heads ablated (zero)"; None when no edit is active."""
    return edit.description if edit else None
