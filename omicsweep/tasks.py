"""Task kinds: what a sample is and what is predicted. Stores report theirs; models declare the kinds they accept.

A plain module beside `errors`, so datasets (which must not import models) and models share the same names.
"""

CELL_CLASSIFICATION = "cell_classification"  # a cell's gene vector -> its class
GENE_PAIR_IMAGE = "gene_pair_image"  # a gene pair's 2-D expression histogram (CNNC) -> the pair's relation

TASK_KINDS = (CELL_CLASSIFICATION, GENE_PAIR_IMAGE)
