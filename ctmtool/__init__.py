"""ctmtool: Consistency Trajectory Models (Kim et al., ICLR 2024) and Generalized CTMs, as a library and a CLI."""

__version__ = "0.1.0"
