"""softrepro: re-run ML papers on softmax and classification losses and judge their claims."""
__version__ = "0.1.0"
