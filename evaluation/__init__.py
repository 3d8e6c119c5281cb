"""Evaluation: streaming feature statistics, Frechet distance / KID / precision-recall, feature networks, reference
files and the ``adasde fid`` pipelines (docs/ALGORITHMS.md section 6; docs/ARCHITECTURE.md)."""

_LAZY: dict[str, tuple[str, str]] = {  # public name -> (submodule, attribute)
    "FEATURE_NETS": (".features", "FEATURE_NETS"),
    "FeatureNet": (".features", "FeatureNet"),
    "FeatureNetError": (".features", "FeatureNetError"),
    "FrechetResult": (".metrics", "FrechetResult"),
    "INCEPTION_ENV": (".features", "INCEPTION_ENV"),
    "INCEPTION_FILES": (".features", "INCEPTION_FILES"),
    "INCEPTION_URLS": (".features", "INCEPTION_URLS"),
    "ImageReadError": (".images", "ImageReadError"),
    "LAYOUTS": (".reference", "LAYOUTS"),
    "RefStats": (".reference", "RefStats"),
    "RunningStats": (".stats", "RunningStats"),
    "StatsFileError": (".reference", "StatsFileError"),
    "check_feature_net": (".reference", "check_feature_net"),
    "compute_reference": (".pipeline", "compute_reference"),
    "fd_fmnist_reference": (".pipeline", "fd_fmnist_reference"),
    "fid_from_stats": (".metrics", "fid_from_stats"),
    "find_inception_weights": (".features", "find_inception_weights"),
    "frechet_distance": (".metrics", "frechet_distance"),
    "get_feature_net": (".features", "load_feature_net"),
    "iter_images": (".images", "iter_images"),
    "kid": (".metrics", "kid"),
    "list_images": (".images", "list_images"),
    "load_feature_net": (".features", "load_feature_net"),
    "load_stats": (".reference", "load_stats"),
    "precision_recall": (".metrics", "precision_recall"),
    "register_feature_net": (".features", "register_feature_net"),
    "save_stats": (".reference", "save_stats"),
    "score_images": (".pipeline", "score_images"),
    "stats_of_source": (".pipeline", "stats_of_source"),
    "to_uint8": (".features", "to_uint8"),
}

__all__ = [
    "FEATURE_NETS",
    "INCEPTION_ENV",
    "INCEPTION_FILES",
    "INCEPTION_URLS",
    "LAYOUTS",
    "FeatureNet",
    "FeatureNetError",
    "FrechetResult",
    "ImageReadError",
    "RefStats",
    "StatsFileError",
    "RunningStats",
    "check_feature_net",
    "compute_reference",
    "fd_fmnist_reference",
    "fid_from_stats",
    "find_inception_weights",
    "frechet_distance",
    "get_feature_net",
    "iter_images",
    "kid",
    "list_images",
    "load_feature_net",
    "load_stats",
    "precision_recall",
    "register_feature_net",
    "save_stats",
    "score_images",
    "stats_of_source",
    "to_uint8",
]


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: import the submodule on first use (keeps the CLI light)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module[0], __name__), module[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
