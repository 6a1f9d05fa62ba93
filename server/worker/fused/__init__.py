"""Fused trial arrays (issue 17): up to K trials of one architecture trained as one stacked model."""
