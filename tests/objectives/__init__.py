"""Tests of emrl.objectives (issue 2, part 3)."""
