"""Accuracy of registrations against ground truth."""
