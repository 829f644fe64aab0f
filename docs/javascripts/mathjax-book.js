// MathJax 2.7 settings for the book, loaded as [MathJax]/config/local/book.js (the build copies
// this file there). jupyter-server-mathjax ships the HTML-CSS output with the STIX-Web web fonts
// only, so MathJax is told to use exactly those and to ask the server for nothing else.
// The hidden MathML that MathJax adds for screen readers takes the native output's styles, which
// name the TeX web fonts for these variants; the browser would ask the server for them.
var nativeTexFonts = {};
[
  '[class="MJX-tex-caligraphic"]', '[class="MJX-tex-caligraphic-bold"]',
  '[class="MJX-tex-oldstyle"]', '[class="MJX-tex-oldstyle-bold"]',
  '[mathvariant="script"]', '[mathvariant="bold-script"]', '[mathvariant="fraktur"]',
  '[mathvariant="bold-fraktur"]', '[mathvariant="double-struck"]',
].forEach(function (rule) { nativeTexFonts[rule] = {"font-family": "inherit"}; });

MathJax.Hub.Config({
  NativeMML: {styles: nativeTexFonts},
  // Chrome understands MathML, but the native output would want the TeX fonts, not shipped.
  MMLorHTML: {prefer: "HTML"},
  "HTML-CSS": {
    availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null,
    // MathJax's stand-in face for "no web font yet" points at about:blank, which Chrome reports
    // as a blocked request; a local() face that no machine has does the same job silently.
    styles: {"@font-face": {"font-family": "MathJax_Blank", src: "local('MathJax_Blank')"}},
  },
  "fast-preview": {disabled: true},
  menuSettings: {CHTMLpreview: false},
  tex2jax: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true,
  },
  messageStyle: "none",
});
MathJax.Ajax.loadComplete("[MathJax]/config/local/book.js");
