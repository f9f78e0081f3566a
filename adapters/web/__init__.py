"""The studio: a local web app to chat with the characters, review feedback, switch LoRA
versions and read the reports. It is a platform like Discord and Telegram (``platform =
"web"``) and the only package that imports the web libraries (Starlette, uvicorn, Jinja2).
"""
