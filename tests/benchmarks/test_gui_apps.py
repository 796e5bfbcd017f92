"""benchmarks/gui_apps.py runs end to end in quick mode: each app started once, its chat box found
in headless Chromium, and the JSON and table the GUI page includes written."""


def test_quick_run(run_quick):
    result, table = run_quick("gui_apps.py")
    assert result["quick"] and result["runs"] == 1
    for name in ("Streamlit", "Gradio"):
        app = result["apps"][name]
        ((ready,), (usable,)) = app["http_ready_s"], app["chat_usable_s"]
        assert 0 < ready <= usable and app["lines_of_code"] > 0
        assert f"| {name} (`{app['file']}`) |" in table
    assert "| HTML and JavaScript (`snippets/gui/chat.html`) |" in table
