"""The run record's names, in one place: MLflow tags, run roles, metric keys and artifact names.

Every layer that writes or reads a run (benchmark's sweep and re-runs, reports' tracking, leaderboard and
figures, the CLI) imports these names from here, so a tag is spelled once and `reports/` needs no benchmark
module (nor Ray) to read what a sweep wrote. This module imports nothing.
"""

from __future__ import annotations

# ---- tags on every run of a sweep (parent and children) --------------------------------------------------------
ROLE_TAG = "omicsweep.role"  # one of the roles below
DATASET_TAG = "omicsweep.dataset"
MODEL_TAG = "omicsweep.model"
METRIC_TAG = "omicsweep.metric"  # the selection metric with its split: "val_accuracy"
FINGERPRINT_TAG = "omicsweep.fingerprint"  # the store's fingerprint
SEED_TAG = "omicsweep.seed"
STORE_TAG = "omicsweep.store_path"
THREADS_TAG = "omicsweep.threads"
CODE_TAG = "omicsweep.code_version"
PACKAGES_TAG = "omicsweep.packages"  # JSON: package -> version
TRAINING_SETUP_TAG = "omicsweep.training_setup"  # benchmark.trial.training_setup: "ddp workers=2 cpu=1 gpu=0", ...
COMMAND_TAG = "omicsweep.command"  # TRAIN_COMMAND on the runs of `omicsweep train`; absent on a sweep's
TRAIN_COMMAND = "train"
SEARCHER_TAG = "omicsweep.searcher"  # on a sweep's parent run: the --searcher (none where nothing is searched)
SCHEDULER_TAG = "omicsweep.scheduler"  # on a sweep's parent run: the --scheduler
VARIANT_TAG = "omicsweep.variant"  # on a sweep's parent run: its --vary KEY=VALUE (absent: not varied)
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: a trial's sweep

# ---- tags on trial and seed re-run runs ------------------------------------------------------------------------
TRIAL_ID_TAG = "omicsweep.trial_id"  # the Ray trial id (a re-run: TRIALID-seedN)
CONFIG_TAG = "omicsweep.config"  # the trial's full configuration as JSON: what `omicsweep reproduce` re-runs
RERUN_OF_TAG = "omicsweep.rerun_of"  # on a seed re-run: the Ray trial id of the configuration re-run
ERROR_TAG = "omicsweep.error"  # a failed run's last error line
DEGENERATE_TAG = "omicsweep.degenerate"  # "true" when the best checkpoint's test predictions are almost all one class

# ---- tags the leaderboard writes -------------------------------------------------------------------------------
RANK_TAG = "omicsweep.rank"  # on a sweep's parent run: its row's rank in its section
SCALED_TAG = "omicsweep.scaled_score"
SECTION_TAG = "omicsweep.section"
TOP_TAG = "omicsweep.top"  # on an experiment's leaderboard run: each section's top model

# ---- run roles (ROLE_TAG values) -------------------------------------------------------------------------------
SWEEP_ROLE = "sweep"  # a (dataset, model) sweep's parent run
TRIAL_ROLE = "trial"  # one sampled configuration
RERUN_ROLE = "seed-rerun"  # the best configuration trained again with a fresh seed
BOARD_ROLE = "leaderboard"  # an experiment's leaderboard files

# ---- metric keys -----------------------------------------------------------------------------------------------
# what the searcher, ASHA, the sweep's best, a resumed study and the leaderboard rank trials by: the best
# validation value so far, reported with every epoch's result (benchmark/training.py)
SEARCH_METRIC = "best_val"
TRAIN_PREFIX, VAL_PREFIX, TEST_PREFIX = "train_", "val_", "test_"  # a metric's split: val_accuracy, test_macro_f1
LOGGED_PREFIXES = (TRAIN_PREFIX, VAL_PREFIX, TEST_PREFIX)
EPOCHS_RUN = "epochs_run"  # epochs a trial trained (ASHA may stop it early): what `reproduce` re-runs
WORLD_SIZE_KEY = "world_size"  # every result carries the processes it trained in, as training saw them
TRAIN_SECONDS = "train_s"  # per result: seconds inside the fit loop so far (training and validation epochs)
TRIAL_OVERHEAD = "trial_overhead_s"  # per result: trial_wall_s - train_s (data open, transform, checkpoints, test, ...)
# logged, never compared by `reproduce`
RESOURCE_KEYS = ("trial_wall_s", "cpu_s", "peak_rss_mb", WORLD_SIZE_KEY, TRAIN_SECONDS, TRIAL_OVERHEAD)
TRANSFORM_CACHE = "transforms"  # a run folder's fitted transforms, one .npz per (store fingerprint, fold, scaling)
DEGENERATE_METRIC = "test_degenerate"  # benchmark.metrics.prediction_collapse, on the test split
# masked expression modelling (benchmark/pretrain.py; lower loss is better, the trial reports best_val = -loss)
MLM_LOSS = "val_mlm_loss"  # the pretraining section's selection metric (METRIC_TAG)
MLM_ACCURACY = "val_mlm_accuracy"
MLM_BASELINE_ACCURACY = "val_mlm_baseline_accuracy"  # each val cell's most common visible non-zero bin
PRETRAIN_COMMAND = "pretrain"  # COMMAND_TAG on the runs of `omicsweep pretrain`
PRETRAINED_PARAM = "pretrained"  # a fine-tuned model's pretraining (RUN_ID | PATH | none): its leaderboard row's variant
BACKBONE_FROM_PARAM = "backbone_from"  # the checkpoint whose vocabulary and sizes a `pretrained: none` network takes
THROUGHPUT_KEYS = ("train_tokens_per_s", "train_cells_per_s", "train_gpu_memory_mb")  # timings: never compared
RERUN_SEED_KEY = "omicsweep.rerun_seed"  # in a Tune config: train with this seed instead of the context's

# ---- artifacts -------------------------------------------------------------------------------------------------
CHECKPOINT_ARTIFACTS = "checkpoint"  # a trial's run: its best checkpoint, with the store's genes and classes
BUNDLE_ARTIFACTS = "bundle"  # an exported model's copies of what it reads beyond its checkpoint (scbert's backbone)
RERUN_PREDICTIONS = "predictions"  # a seed re-run's run: its best checkpoint's test predictions
PLOTS_ARTIFACTS = "plots"  # a run's report figures
# files of a checkpoint folder
MODEL_FILE = "model.pt"  # a torch model's state_dict
ESTIMATOR_FILE = "estimator.skops"  # an estimator (models/estimator_state.py)
XGBOOST_FILE = "estimator.ubj"  # an xgboost model in its own UBJSON format (models/xgboost_model.py)
TRANSFORM_FILE = "transform.npz"  # the fitted scaling
TRIAL_FILE = "trial.json"  # the trial's configuration and task
PREDICTIONS_FILE = "test_predictions.npz"  # y_true and proba of the test split
GENES_FILE = "genes.txt"  # the store's genes, one a line, store order
CLASSES_FILE = "classes.json"  # the store's classes, fingerprint and value kind
