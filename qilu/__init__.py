"""Qilu: the composition root of the telemedicine referral and e-health-record service."""
