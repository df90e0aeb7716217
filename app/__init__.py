"""The Streamlit inspector: main.py routes, screens/ hold pages, views/ build figures (pure)."""
