"""Operations: answer configurations, staged rollouts and rollback, SLOs and burn rates, the Operations page."""
