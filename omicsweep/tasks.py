"""Task kinds: what a sample is and what is predicted. Stores report theirs; models declare the kinds they accept.

A plain module beside `errors`, so datasets (which must not import models) and models share the same names.
"""

CELL_CLASSIFICATION = "cell_classification"  # a cell's gene vector -> its class
GENE_PAIR_IMAGE = "gene_pair_image"  # a gene pair's 2-D expression histogram (CNNC) -> the pair's relation
MASKED_EXPRESSION = "masked_expression"  # a corpus cell's expression tokens, some masked -> the masked bins (scBERT)

TASK_KINDS = (CELL_CLASSIFICATION, GENE_PAIR_IMAGE)  # classification kinds: what a store reports, fit_torch trains
# self-supervised kinds: a model trained by benchmark/pretrain.py on a corpus store (omicsweep pretrain), not a sweep
# of a labelled store; its leaderboard section ranks by val_mlm_loss (lower is better)
PRETRAINING_TASKS = (MASKED_EXPRESSION,)
