"""What every room shares and nothing else: the bad-input report, user-facing errors, atomic file writes."""
from .errors import FarslipError, UsageError
from .files import atomic_path, atomic_write, distinct_stems, refuse_overwriting_inputs, same_file
from .problems import BadInput, Problem, append_problems, read_problems, summarize_problems

__all__ = ["BadInput", "FarslipError", "Problem", "UsageError", "append_problems", "atomic_path", "atomic_write",
           "distinct_stems", "read_problems", "refuse_overwriting_inputs", "same_file", "summarize_problems"]
