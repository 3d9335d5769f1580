"""nurture: email nurturing automation.

Sequences of templated emails are scheduled on a business calendar, sent by RQ
workers over SMTP, and stopped by replies, unsubscribes and bounces. See
README.md for the commands and DESIGN notes for the architecture.
"""
