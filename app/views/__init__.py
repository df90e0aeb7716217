"""Pure figure and table builders for the pages: data in, plotly/altair figures or dicts out; no st.* calls."""
