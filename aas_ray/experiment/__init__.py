"""The experiment layer: one process, any device (data + model + AL loop + SpCL trainer)."""
