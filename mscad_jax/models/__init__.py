"""Encoder, Hopfield memories, the AnoMem model and the stage-2 detector."""
