"""Evaluation: streaming feature statistics, Frechet distance / KID / precision-recall, feature networks, reference
files and the ``adasde fid`` pipelines (docs/ALGORITHMS.md section 6; docs/ARCHITECTURE.md)."""

from .features import (
    FEATURE_NETS,
    INCEPTION_ENV,
    INCEPTION_FILES,
    INCEPTION_URLS,
    FeatureNet,
    FeatureNetError,
    find_inception_weights,
    load_feature_net,
    register_feature_net,
    to_uint8,
)
from .images import ImageReadError, iter_images, list_images
from .metrics import FrechetResult, fid_from_stats, frechet_distance, kid, precision_recall
from .pipeline import (
    compute_reference,
    fd_fmnist_reference,
    score_images,
    stats_of_source,
)
from .reference import LAYOUTS, RefStats, StatsFileError, check_feature_net, load_stats, save_stats
from .stats import RunningStats

get_feature_net = load_feature_net  # alias used by demo/ and bench/

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
