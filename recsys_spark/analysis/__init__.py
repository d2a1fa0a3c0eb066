"""What the notebooks show, as tested functions (the notebooks only call them).

  clickstream     funnel, sessions, popularity long tail, active users, cohort retention
  model_results   evaluation report tables, nearest items, a user's history and recommendations
  plots           matplotlib figures of both
"""
