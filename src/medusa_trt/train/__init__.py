"""Medusa-1 head training (frozen backbone, self-distillation), accuracy tables and step-time sweeps."""
