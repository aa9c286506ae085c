"""
MaxQ: a DAG workflow engine for shell scripts.
"""

__version__ = "0.1.0"
