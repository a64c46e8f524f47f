/* Written for the tinyvit book (MIT, like the rest of the repository).
 *
 * The widget renderer (@jupyter-widgets/base, bundled in embed.js) typesets every widget label with the
 * MathJax 2 call `MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])` whenever `window.MathJax` exists.
 * The book loads MathJax 3, which has no `Hub`, so each widget would throw "Cannot read properties of
 * undefined (reading 'Queue')". This file gives every object assigned to `window.MathJax` (Sphinx's
 * configuration first, then MathJax 3 itself when it loads) a small `Hub` whose `Queue` forwards to
 * MathJax 3's `typesetPromise`, after MathJax's own first pass over the page.
 * Load it before embed.js.
 */
(function () {
  "use strict";
  var pending = [];  // elements handed over before MathJax 3 has started

  function typesetLater(element) {
    var mathjax = window.MathJax;
    if (mathjax && mathjax.startup && mathjax.startup.promise && mathjax.typesetPromise) {
      mathjax.startup.promise = mathjax.startup.promise
        .then(function () { return mathjax.typesetPromise([element]); })
        .catch(function (err) { console.warn("MathJax could not typeset a widget label:", err); });
    } else {
      pending.push(element);
    }
  }

  var hub = {
    Queue: function () {
      for (var i = 0; i < arguments.length; i++) {
        var command = arguments[i];
        if (Array.isArray(command) && command[0] === "Typeset" && command[2]) typesetLater(command[2]);
      }
    },
  };

  function withHub(value) {
    if (value && typeof value === "object" && !value.Hub) {
      Object.defineProperty(value, "Hub", { value: hub, enumerable: false, configurable: true });
    }
    if (value && value.version) {  // MathJax 3 proper: its startup promise exists once this script ran
      setTimeout(function () { pending.splice(0).forEach(typesetLater); }, 0);
    }
    return value;
  }

  var current = withHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    enumerable: true,
    get: function () { return current; },
    set: function (value) { current = withHub(value); },
  });
})();
