"""Theory checks of Papers A and B: closed forms and the toy models they rest on."""
