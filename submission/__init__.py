"""AIMO submission harness: tool-integrated reasoning, voting and time budgeting on Kaggle."""

__version__ = "0.1.0"
