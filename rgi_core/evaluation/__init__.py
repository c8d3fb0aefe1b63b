"""Evaluation: synthetic defects with ground truth, metrics, labelled sets, report images and plots."""
