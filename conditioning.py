"""Guidance and conditioning for every door that generates or distils (docs/ALGORITHMS.md section 11, "Guidance and
presets"): the one translation from ``--guidance cfg|cg|uncond``, ``--guidance-rate``, ``--prompts``, ``--classes``,
``--classifier`` and ``--preset`` into a (possibly wrapped) model and its per-seed / per-iteration ``extra_args``.

* ``cfg`` (classifier-free): text-to-image models only; every seed gets prompt ``s mod len(prompts)`` and the CFG
  scale ``--guidance-rate`` (default 7.5).
* ``cg`` (classifier guidance): the model is wrapped in :class:`loaders.guidance.ClassifierGuided` with the
  noise-aware classifier ``--classifier SPEC`` (``builtin:fmnist-noisy-classifier`` is the default for
  ``builtin:fmnist``; ``adm:FILE.pt`` or a bare ``FILE.pt`` for guided-diffusion classifiers) and rate
  ``--guidance-rate`` (default 1; 4 for ``builtin:fmnist``, measured in bench/results/guidance.md).
* ``uncond``: no guidance (a text model gets its prompts at CFG scale 1; a class-conditional model its labels).
* Classes: seed ``s`` gets ``classes[s mod len(classes)]``; without ``--classes`` a class-conditional model (or
  ``cg``) gets a class drawn from a generator seeded by the seed alone, so an image depends only on its seed.
  Distillation draws the labels (or prompts) of each iteration from the engine's per-iteration generator.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import InputFileError, UsageError
from .policy import Plan
from .policy.presets import GUIDANCE, Preset

DEFAULT_RATE = {"cfg": 7.5, "cg": 1.0}
DEFAULT_CLASSIFIER = {"builtin-fmnist": "builtin:fmnist-noisy-classifier"}
# cg rate per model family when --guidance-rate is not given (builtin-fmnist: measured, bench/results/guidance.md)
DEFAULT_CG_RATE = {"builtin-fmnist": 4.0}
_CLASS_SEED = 0x5EED_C1A55

ExtraFor = Callable[[list[int]], dict[str, Any]]
ConditionFn = Callable[[int, torch.Generator], dict[str, Any]]


@dataclass
class Conditioning:
    """What :func:`build_conditioning` returns: the model to sample / distil, ``extra_for(seeds)``,
    ``distill_condition(batch) -> condition_fn`` (None without conditioning) and a JSON-ready record."""

    model: Any
    extra_for: ExtraFor | None
    distill_condition: Callable[[int], ConditionFn | None]
    record: dict[str, Any] = field(default_factory=dict)
    prompts: list[str] | None = None
    rate: float | None = None

    def prompt_of(self, seed: int) -> str | None:
        return self.prompts[int(seed) % len(self.prompts)] if self.prompts else None


def parse_classes(value: str | int | Sequence[int] | None) -> list[int] | None:
    """``"7"`` / ``"0,3,7"`` / ``[0, 3]`` -> list of class indices (None for None)."""
    if value is None:
        return None
    if isinstance(value, int):
        items: list[Any] = [value]
    elif isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    else:
        items = list(value)
    try:
        out = [int(v) for v in items]
    except (TypeError, ValueError):
        raise UsageError(f"--classes {value!r}: expected comma-separated class indices, e.g. 7 or 0,3,7") from None
    if not out or min(out) < 0:
        raise UsageError(f"--classes {value!r}: expected one or more class indices >= 0, e.g. 7 or 0,3,7")
    return out


def model_classes(model: Any) -> int:
    """Number of classes of a class-conditional denoiser (EDM ``label_dim``, ADM ``num_classes``), else 0."""
    inner = getattr(model, "inner", model)
    return int(getattr(inner, "label_dim", 0) or getattr(inner, "num_classes", 0) or 0)


def classifier_classes(classifier: Any) -> int:
    """Number of output classes of a guidance classifier, if it says (0 when unknown)."""
    n = getattr(classifier, "num_classes", None)
    if n:
        return int(n)
    head = getattr(classifier, "head", None)
    if isinstance(head, torch.nn.Linear):
        return int(head.out_features)
    cfg = getattr(getattr(classifier, "net", None), "cfg", None)
    return int(getattr(cfg, "out_channels", 0) or 0)


def load_classifier(spec: str, device: Any = None, dtype: Any = None) -> torch.nn.Module:
    """A noise-aware classifier ``f(x, sigma) -> logits`` from ``builtin:fmnist-noisy-classifier``, ``adm:FILE`` or a
    bare guided-diffusion classifier file (``.pt`` / ``.pth`` / ``.safetensors``)."""
    from .loaders.base import ModelSpecError

    if spec.startswith("builtin:"):
        if spec.strip() != "builtin:fmnist-noisy-classifier":
            raise ModelSpecError(f"--classifier {spec}: unknown built-in classifier; available: "
                                 "builtin:fmnist-noisy-classifier")
        from .builtin.noisy_classifier import load_noisy_classifier

        return load_noisy_classifier(device=device)
    file = spec[4:] if spec.startswith("adm:") else spec
    if Path(file).suffix.lower() not in (".pt", ".pth", ".safetensors", ".bin"):
        raise ModelSpecError(f"--classifier {spec}: expected builtin:fmnist-noisy-classifier or a guided-diffusion "
                             "classifier file (adm:FILE.pt, FILE.pt or FILE.safetensors)")
    if not Path(file).expanduser().is_file():
        raise InputFileError(f"--classifier {file}: file not found; give the path of the noise-aware classifier "
                             "(e.g. 256x256_classifier.pt)")
    from .loaders.guided_diffusion import load_adm_classifier

    return load_adm_classifier(file, device, dtype)


def _rate(value: float | None, guidance: str, family: str = "") -> float:
    if value is None and guidance == "cg":
        return DEFAULT_CG_RATE.get(family, DEFAULT_RATE["cg"])
    rate = DEFAULT_RATE.get(guidance, 1.0) if value is None else float(value)
    if not rate == rate or rate < 0 or rate == float("inf"):
        raise UsageError(f"--guidance-rate {value}: expected a finite number >= 0")
    return rate


def _seed_classes(seeds: Sequence[int], classes: list[int] | None, n: int) -> torch.Tensor:
    if classes:
        return torch.tensor([classes[int(s) % len(classes)] for s in seeds], dtype=torch.long)
    return torch.tensor([int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(int(s) ^ _CLASS_SEED)))
                         for s in seeds], dtype=torch.long)


def build_conditioning(
    model: Any,
    *,
    guidance: str | None = None,
    guidance_rate: float | None = None,
    prompts: str | Sequence[str] | None = None,
    negative_prompt: str | None = None,
    classes: str | int | Sequence[int] | None = None,
    classifier: str | Any | None = None,
    device: Any = None,
    dtype: Any = None,
    spec: str | None = None,
) -> Conditioning:
    """Translate the guidance settings for ``model`` (a loaded ``Denoiser``) into a :class:`Conditioning` (module
    docstring).  ``guidance`` None: ``cfg`` with prompts, ``cg`` with a classifier, else ``uncond``.  ``prompts``:
    a prompt file or a list.  ``classifier``: a spec (:func:`load_classifier`) or a loaded module.  Every
    inconsistent combination is a one-line :class:`UsageError` naming ``spec`` (the model spec) or the family."""
    from .loaders.guidance import ClassifierGuided
    from .loaders.prompts import PromptCondition, condition_args, prompts_for_seeds, read_prompts

    if guidance is not None and guidance not in GUIDANCE:
        raise UsageError(f"--guidance {guidance!r}: use one of {', '.join(GUIDANCE)}")
    prompt_list: list[str] | None = None
    if prompts is not None:
        prompt_list = read_prompts(prompts) if isinstance(prompts, (str, Path)) else [str(p) for p in prompts]
        if not prompt_list:
            raise UsageError("the prompt list is empty")
    wrapped = isinstance(model, ClassifierGuided)
    if guidance is None:
        guidance = "cfg" if prompt_list else "cg" if (classifier is not None or wrapped) else "uncond"
    rate = _rate(guidance_rate, guidance, getattr(model, "family", ""))
    cls_list = parse_classes(classes)
    text = bool(getattr(model, "text_conditioned", False))
    family = spec or getattr(model, "family", "unknown")
    record: dict[str, Any] = {"guidance": guidance, "guidance_rate": rate if guidance != "uncond" else None}

    if text:
        if guidance == "cg":
            raise UsageError(f"--guidance cg: {family} is a text-to-image model; use --guidance cfg with --prompts")
        if cls_list is not None or classifier is not None:
            raise UsageError(f"--classes / --classifier: {family} is a text-to-image model; give --prompts instead")
        if guidance == "cfg" and not prompt_list:
            raise UsageError("--guidance cfg needs prompts: --prompts FILE (.txt or MS-COCO captions .csv)")
        scale = rate if guidance == "cfg" else 1.0
        record.update(guidance_rate=scale, prompts=len(prompt_list) if prompt_list else None)
        if not prompt_list:
            return Conditioning(model, None, lambda batch: None, record)
        plist = prompt_list

        def extra_text(seeds: list[int]) -> dict[str, Any]:
            return condition_args(prompts_for_seeds(plist, seeds), scale, negative_prompt)

        cond = PromptCondition(plist, scale, negative_prompt)
        return Conditioning(model, extra_text, cond.distill_condition, record, plist, scale)

    if prompt_list:
        from .loaders.base import ModelSpecError

        raise ModelSpecError(f"prompts were given but {family} is not a text-to-image model; give a Stable Diffusion "
                             "model, or drop --prompts")
    if guidance == "cfg":
        raise UsageError(f"--guidance cfg needs a text-to-image model with --prompts; {family} has none (use "
                         "--guidance cg with --classes for classifier guidance, or uncond)")
    n_model = model_classes(model)
    if guidance == "uncond":
        if wrapped:
            model = model.inner
        if classifier is not None:
            raise UsageError("--classifier is used by --guidance cg only; drop it or use --guidance cg")
        if cls_list is not None and not n_model:
            raise UsageError(f"--classes: {family} is unconditional; use --guidance cg (classifier guidance) to "
                             "steer it towards classes")
        n = n_model
    else:  # cg
        if classifier is None and not wrapped:
            classifier = DEFAULT_CLASSIFIER.get(getattr(model, "family", ""))
            if classifier is None:
                raise UsageError(f"--guidance cg on {family}: give --classifier SPEC (a noise-aware classifier, e.g. "
                                 "256x256_classifier.pt)")
        if classifier is not None:
            clf = load_classifier(classifier, device, dtype) if isinstance(classifier, str) else classifier
            inner = model.inner if wrapped else model
            clip = bool(getattr(inner, "clip", False)) or (wrapped and model.clip)
            if clip and hasattr(inner, "clip"):
                inner.clip = False  # the guided x0 is clamped instead
            model = ClassifierGuided(inner, clf, None, rate, clip)
            record["classifier"] = classifier if isinstance(classifier, str) else type(classifier).__name__
        else:  # guided by its spec (adm:FILE?classifier=...): its own rate unless --guidance-rate is given
            if guidance_rate is not None:
                model.rate = rate
            record.update(guidance_rate=model.rate,
                          classifier=getattr(model.classifier, "source", "from the model spec"))
        n = n_model or classifier_classes(model.classifier)
        if not n and cls_list is None:
            raise UsageError("--guidance cg: the classifier does not say how many classes it has; give --classes")
    if n and cls_list is not None and max(cls_list) >= n:
        raise UsageError(f"--classes {','.join(map(str, cls_list))}: {family} has classes 0..{n - 1}")
    if not n and cls_list is None:
        return Conditioning(model, None, lambda batch: None, record)
    record["classes"] = cls_list if cls_list is not None else f"drawn per seed from 0..{n - 1}"
    chosen = cls_list

    def extra_class(seeds: list[int]) -> dict[str, Any]:
        return {"class_labels": _seed_classes(seeds, chosen, n)}

    def distill_condition(batch: int) -> ConditionFn:
        def fn(iteration: int, rng: torch.Generator) -> dict[str, Any]:
            if chosen:
                idx = torch.randint(len(chosen), (batch,), generator=rng)
                return {"class_labels": torch.tensor(chosen, dtype=torch.long)[idx]}
            return {"class_labels": torch.randint(n, (batch,), generator=rng)}

        return fn

    return Conditioning(model, extra_class, distill_condition, record)


# ------------------------------------------------------------------------------------------------ command line
def conditioning_from_args(model: Any, args: argparse.Namespace, prompts: Any = None) -> Conditioning:
    """:func:`build_conditioning` with the settings of a parsed command line (``prompts`` overrides
    ``args.prompts``, e.g. a single ``--prompt``)."""
    return build_conditioning(model, guidance=getattr(args, "guidance", None),
                              guidance_rate=getattr(args, "guidance_rate", None),
                              prompts=prompts if prompts is not None else getattr(args, "prompts", None),
                              negative_prompt=getattr(args, "negative_prompt", None),
                              classes=getattr(args, "classes", None), classifier=getattr(args, "classifier", None),
                              device=getattr(args, "device", None), spec=getattr(args, "model", None))


def with_solver_options(p: Any, preset: Preset | None) -> Any:
    """The plan ``p`` with the preset's solver form (e.g. DPM-Solver++ noise prediction, lower_order_final) added
    to the sampler options of the baselines that take them; ``p`` itself when nothing applies."""
    from dataclasses import fields

    from .policy.presets import solver_options

    opts = solver_options(preset, p.sampler)
    if not opts:
        return p
    return _OptionPlan(**{f.name: getattr(p, f.name) for f in fields(p)}, extra_options=opts)


@dataclass
class _OptionPlan(Plan):
    """A :class:`policy.Plan` with extra keyword options for its sampler (the preset's solver form)."""

    extra_options: dict[str, Any] = field(default_factory=dict)

    def options(self, model: Any = None) -> dict[str, Any]:
        return {**super().options(model), **self.extra_options}

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), "solver_options": dict(self.extra_options)}
