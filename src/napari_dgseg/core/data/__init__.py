"""Datasets: synthetic domains with ground truth, folder and public-dataset loaders."""
