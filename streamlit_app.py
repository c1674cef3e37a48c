"""Dashboard entry point: `streamlit run streamlit_app.py` (pages live in dashboard/pages/)."""
import streamlit as st

st.set_page_config(page_title="Relating by Contrasting", page_icon=":material/hub:", layout="wide")
st.navigation([
    st.Page("dashboard/pages/models.py", title="Models", icon=":material/deployed_code:", default=True),
    st.Page("dashboard/pages/generations.py", title="Generations", icon=":material/auto_awesome:"),
    st.Page("dashboard/pages/relatedness.py", title="Relatedness", icon=":material/join_inner:"),
    st.Page("dashboard/pages/retrieval.py", title="Retrieval", icon=":material/image_search:"),
    st.Page("dashboard/pages/score.py", title="Score your pairs", icon=":material/upload_file:"),
    st.Page("dashboard/pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("dashboard/pages/compare.py", title="Compare", icon=":material/leaderboard:"),
]).run()
