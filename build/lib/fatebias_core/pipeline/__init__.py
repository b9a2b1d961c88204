"""The chain as steps: the step table, the step functions and the local engine."""
