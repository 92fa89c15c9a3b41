"""What an operator does with a campaign: pause, resume, cancel, resend, sweep, report, status, plan, check."""
