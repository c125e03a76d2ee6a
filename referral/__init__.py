"""Referrals: hospital directory, tiered routing, two-way transfers, deadlines and the closed loop."""
