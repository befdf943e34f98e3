"""Reading filed mail for display: pure functions over the stored raw bytes.

:mod:`gateway.mailview.parts` walks the MIME tree (text, HTML, attachments,
decoded filenames) and never raises on malformed mail; :mod:`gateway.mailview.html`
sanitises the HTML part with nh3 and blocks remote images;
:mod:`gateway.mailview.fields` builds the header fields every API answer about a
filed email starts with (a record's list and the email itself).
"""
