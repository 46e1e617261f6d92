"""Records for studies: scikit-learn's bundled datasets, a site's own CSV, and the split of a
study's records into sites and a held-out test set."""

from flsuite.lazy import lazy_exports

_EXPORTS = {
    "check_labels": "csv_source",
    "clear_csv_cache": "csv_source",
    "load_csv": "csv_source",
    "Dataset": "datasets",
    "load_scaled_csv": "feature_ranges",
    "load_site_csv": "feature_ranges",
    "scale_to_ranges": "feature_ranges",
    "load_builtin": "datasets",
    "label_skew": "partition",
    "partition": "partition",
    "train_test_indices": "partition",
    "ModelShape": "study_data",
    "StudyData": "study_data",
    "load_source": "study_data",
    "model_shape": "study_data",
    "split_study": "study_data",
    "clear_site_cache": "site_cache",
    "file_identity": "site_cache",
    "prepare_once": "site_cache",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
