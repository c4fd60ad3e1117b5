"""The built-in Emu Edit tasks (Sheynin et al., CVPR 2024, §3.1 and Table 1).

Each entry is a recipe: the LLM agent's system prompt and in-context examples (datagen stage 1), how
its image pairs are made (stage 3, ``pair_strategy``) and how they are filtered (stage 4,
``filters``). Examples follow one convention for ``original_object`` / ``edited_object``, stated in
each task's system prompt; the task classifier also trains on the instructions, so every example is
worded to read as its own task and no other.
"""

from __future__ import annotations

from .registry import FilterThresholds, Task, TaskExample

#: Filter names the ``color`` task uses (``edited_object``), written as the adjective that appears in
#: the output caption ("a sepia photo of ..."); the datagen filter stage maps each to an image op.
COLOR_FILTERS = (
    "grayscale", "sepia", "inverted", "blurred", "sharpened", "brightened", "darkened", "high-contrast",
    "low-contrast", "saturated", "desaturated", "warm-toned", "cool-toned", "posterized", "solarized", "embossed",
)  # fmt: skip

#: Dense maps the ``image_to_image`` task converts to (photo -> map) or from (map -> ``"photo"``).
IMAGE_MAPS = ("depth map", "normal map", "edge map", "sketch", "pose", "segmentation map")


def _examples(*rows: tuple[str, str, str, str, str]) -> tuple[TaskExample, ...]:
    """Rows of (instruction, input_caption, output_caption, original_object, edited_object)."""
    return tuple(TaskExample(*row) for row in rows)


def _system_prompt(name: str, what: str, original: str, edited: str, rules: str) -> str:
    """The agent prompt shared by all tasks, specialised by what the task is and its object fields."""
    return (
        f'You write training data for an instruction-based image editor. Your task type is "{name}": {what}\n'
        f'You receive the caption of an input image. Invent one realistic "{name}" edit that fits that image '
        "and reply with a JSON object with exactly these keys:\n"
        '"instruction": the edit request as a person would type it to the editor;\n'
        '"output_caption": the caption of the edited image, worded like the input caption and changed only '
        "where the edit changes the image;\n"
        f'"original_object": {original};\n'
        f'"edited_object": {edited}.\n'
        f'Rules: {rules} The instruction must clearly ask for this kind of edit ("{name}") and no other, and '
        "the output caption must differ from the input caption. Vary your wording from answer to answer "
        "(imperative, question or request; terse or detailed).\n"
        "Reply with the JSON object only, with no other text."
    )


# ----------------------------------------------------------------------------------------------------
# Region-based tasks: the edit is confined to (or, for background, excluded from) an object's mask.
# ----------------------------------------------------------------------------------------------------

_LOCAL = Task(
    name="local",
    group="region",
    description="Change one object's attributes (color, age, shape) or replace it with a different object.",
    examples=_examples(
        ("Turn the dog into a cat", "a brown dog sitting on a porch", "a brown cat sitting on a porch", "dog", "cat"),
        ("make the car red", "a blue car parked on a quiet street", "a red car parked on a quiet street",
         "blue car", "red car"),
        ("can you replace the apples in the bowl with oranges?", "a bowl of apples on a kitchen table",
         "a bowl of oranges on a kitchen table", "apples", "oranges"),
        ("I want the woman's hair to be blonde", "a woman with black hair smiling at the camera",
         "a woman with blonde hair smiling at the camera", "black hair", "blonde hair"),
        ("swap the bicycle for a motorcycle", "a man riding a bicycle down a country road",
         "a man riding a motorcycle down a country road", "bicycle", "motorcycle"),
        ("horse -> zebra", "a horse grazing in a green pasture", "a zebra grazing in a green pasture",
         "horse", "zebra"),
        ("Could you change the tulips to sunflowers, keeping everything else as it is?",
         "a vase of red tulips on a windowsill", "a vase of sunflowers on a windowsill", "red tulips", "sunflowers"),
        ("give the boy a green shirt instead of the white one", "a boy in a white shirt playing soccer",
         "a boy in a green shirt playing soccer", "white shirt", "green shirt"),
        ("make the little girl's balloon star-shaped", "a little girl holding a round balloon at a fair",
         "a little girl holding a star-shaped balloon at a fair", "round balloon", "star-shaped balloon"),
        ("replace the coffee mug with a teacup", "a coffee mug next to a laptop on a desk",
         "a teacup next to a laptop on a desk", "coffee mug", "teacup"),
        ("Change the umbrella from yellow to purple", "a person holding a yellow umbrella in the rain",
         "a person holding a purple umbrella in the rain", "yellow umbrella", "purple umbrella"),
        ("let's make the cat's eyes blue", "a close-up of a cat with green eyes", "a close-up of a cat with blue eyes",
         "green eyes", "blue eyes"),
        ("the sedan should be a pickup truck", "a white sedan in a driveway", "a white pickup truck in a driveway",
         "sedan", "pickup truck"),
        ("transform the duck into a swan", "a duck swimming on a pond", "a swan swimming on a pond", "duck", "swan"),
        ("make the young man look like an old man with gray hair", "a young man reading a newspaper on a bench",
         "an old man with gray hair reading a newspaper on a bench", "young man", "old man"),
        ("convert the sailboat into a pirate ship", "a sailboat on a calm blue sea", "a pirate ship on a calm blue sea",
         "sailboat", "pirate ship"),
    ),
    pair_strategy="masked",
    filters=FilterThresholds(),
    system_prompt=_system_prompt(
        "local",
        "change one object in the image, either an attribute of it (color, age, shape, expression) or the "
        "object itself (replace it with another object), leaving the rest of the image as it is.",
        "the object as the input caption names it (a short noun phrase that appears in the input caption)",
        "the object after the edit (a short noun phrase that appears in the output caption)",
        "Change exactly one object. Do not change its material (that is a texture edit), the background, the "
        "weather or the style. The edited_object must appear word for word in the output caption.",
    ),
    verbs=("change", "turn", "replace", "make", "swap", "transform", "convert"),
)

_REMOVE = Task(
    name="remove",
    group="region",
    description="Remove an object from the image and fill its place with plausible background.",
    examples=_examples(
        ("remove the dog from the couch", "a dog sleeping on a leather couch", "a leather couch", "dog", ""),
        ("Delete the car parked in front of the house", "a red car parked in front of a white house",
         "a white house", "red car", ""),
        ("can you erase the people in the background?", "a fountain in a plaza with people in the background",
         "a fountain in an empty plaza", "people", ""),
        ("get rid of the power lines", "a sunset over hills with power lines across the sky", "a sunset over hills",
         "power lines", ""),
        ("I'd like the trash can gone", "a park bench next to a trash can", "a park bench", "trash can", ""),
        ("take the glasses off the man's face", "a man wearing glasses smiling", "a man smiling", "glasses", ""),
        ("no birds", "three birds sitting on a wooden fence", "a wooden fence", "birds", ""),
        ("eliminate the boat from the lake", "a small boat floating on a mountain lake", "a mountain lake", "boat", ""),
        ("erase the tourist standing next to the statue", "a tourist standing next to a bronze statue",
         "a bronze statue", "tourist", ""),
        ("remove the hat", "a woman wearing a straw hat on the beach", "a woman on the beach", "straw hat", ""),
        ("Could you take the laptop away from the desk and leave the rest of the room untouched?",
         "a laptop and a lamp on a wooden desk", "a lamp on a wooden desk", "laptop", ""),
        ("delete every cloud from the sky", "white clouds in a blue sky over a field", "a clear blue sky over a field",
         "clouds", ""),
        ("get the cat off the windowsill", "a cat sitting on a windowsill next to a plant",
         "a windowsill with a plant", "cat", ""),
        ("I want the fence removed", "a garden with a wooden fence and rose bushes", "a garden with rose bushes",
         "wooden fence", ""),
        ("wipe the graffiti off the wall", "a brick wall covered in graffiti", "a clean brick wall", "graffiti", ""),
        ("please remove the keys from the table", "a set of car keys and a wallet on a table", "a wallet on a table",
         "car keys", ""),
    ),
    pair_strategy="masked",
    filters=FilterThresholds(detector="absent"),  # the removed object must no longer be detected
    system_prompt=_system_prompt(
        "remove",
        "remove one object from the image so that its place shows plausible background.",
        "the object to remove, as the input caption names it (a short noun phrase that appears in the input "
        "caption)",
        'an empty string ""',
        "Pick an object that the input caption mentions. The output caption must no longer mention the removed "
        "object at all, not even in another form (no 'without the dog').",
    ),
    verbs=("remove", "delete", "erase", "take away", "get rid of", "eliminate", "wipe"),
)

_ADD = Task(
    name="add",
    group="region",
    description="Add a new object to the image, at a place that fits the scene.",
    examples=_examples(
        ("add a red balloon tied to the bench", "a wooden bench in a park",
         "a wooden bench in a park with a red balloon tied to it", "bench", "red balloon"),
        ("put a cat on the sofa", "a gray sofa in a bright living room",
         "a cat lying on a gray sofa in a bright living room", "sofa", "cat"),
        ("Insert a sailboat on the horizon", "a calm ocean at sunset",
         "a calm ocean at sunset with a sailboat on the horizon", "", "sailboat"),
        ("can you add a hat to the snowman?", "a snowman in a snowy yard", "a snowman wearing a hat in a snowy yard",
         "snowman", "hat"),
        ("place a vase of flowers on the table", "an empty dining table by a window",
         "a vase of flowers on a dining table by a window", "dining table", "vase of flowers"),
        ("I want a rainbow in the sky", "a green meadow under a cloudy sky",
         "a green meadow under a cloudy sky with a rainbow", "sky", "rainbow"),
        ("include a dog running beside the jogger", "a jogger running along a beach",
         "a jogger running along a beach with a dog running beside her", "jogger", "dog"),
        ("draw a mustache on the man", "a portrait of a man in a suit", "a portrait of a man with a mustache in a suit",
         "man", "mustache"),
        ("add candles", "a chocolate birthday cake on a plate", "a chocolate birthday cake with candles on a plate",
         "cake", "candles"),
        ("Put some ducks in the pond, please", "a pond surrounded by tall grass",
         "ducks swimming in a pond surrounded by tall grass", "pond", "ducks"),
        ("could you place a stack of books on the desk next to the lamp?", "a lamp on a wooden desk",
         "a stack of books and a lamp on a wooden desk", "desk", "stack of books"),
        ("add an airplane flying overhead", "a city skyline on a clear day",
         "a city skyline on a clear day with an airplane flying overhead", "", "airplane"),
        ("give the girl a pair of sunglasses", "a girl smiling on a sunny street",
         "a girl wearing a pair of sunglasses smiling on a sunny street", "girl", "sunglasses"),
        ("Insert a small wooden boat floating near the shore of the lake so the scene feels less empty",
         "a quiet lake with pine trees on the shore",
         "a quiet lake with a small wooden boat floating near the shore and pine trees", "lake", "small wooden boat"),
        ("put a butterfly on the flower", "a close-up of a pink flower", "a close-up of a butterfly on a pink flower",
         "flower", "butterfly"),
        ("street lamp on the sidewalk", "an empty sidewalk at dusk", "an empty sidewalk at dusk with a street lamp",
         "sidewalk", "street lamp"),
    ),
    pair_strategy="masked",
    filters=FilterThresholds(detector="present"),  # the added object must be detected in the edit
    system_prompt=_system_prompt(
        "add",
        "add one new object to the image at a place where it fits the scene.",
        'the existing thing the new object goes on, in or next to, as the input caption names it, or an empty '
        'string "" when the place is not an object (the sky, the horizon)',
        "the added object, a short noun phrase",
        "Add something the input caption does not already contain. Every word of the edited_object must appear "
        "in the output caption, and the output caption must keep everything the input caption describes.",
    ),
    verbs=("add", "put", "insert", "place", "include", "draw", "give"),
)

_TEXTURE = Task(
    name="texture",
    group="region",
    description="Change the material or surface texture of one object while keeping its shape.",
    examples=_examples(
        ("make the vase look like it's made of marble", "a white vase on a shelf", "a marble vase on a shelf",
         "vase", "marble"),
        ("change the table to glass", "a wooden table in a dining room", "a glass table in a dining room",
         "table", "glass"),
        ("turn the teddy bear's fur into knitted wool", "a teddy bear sitting on a bed",
         "a knitted wool teddy bear sitting on a bed", "teddy bear", "knitted wool"),
        ("can you give the car a chrome finish?", "a sports car parked on a street",
         "a chrome sports car parked on a street", "sports car", "chrome"),
        ("I want the statue to be made of gold", "a stone statue of a lion in a garden",
         "a gold statue of a lion in a garden", "statue", "gold"),
        ("cover the sofa in leather", "a fabric sofa in a living room", "a leather sofa in a living room",
         "sofa", "leather"),
        ("cat made of wood", "a cat sitting on a rug", "a carved wooden cat sitting on a rug", "cat", "wood"),
        ("make the apple out of crystal", "a red apple on a table", "a crystal apple on a table", "apple", "crystal"),
        ("retexture the walls as exposed brick", "a bedroom with white walls", "a bedroom with exposed brick walls",
         "walls", "brick"),
        ("Could you make the dog's fur look like it is woven from straw?", "a dog lying on the grass",
         "a dog with woven straw fur lying on the grass", "dog", "straw"),
        ("the mug should have a rough clay texture", "a plastic mug on a desk", "a rough clay mug on a desk",
         "mug", "clay"),
        ("make the floor polished concrete", "a kitchen with a tiled floor", "a kitchen with a polished concrete floor",
         "floor", "polished concrete"),
        ("make the pumpkin out of ice", "a pumpkin on a porch step", "an ice pumpkin on a porch step",
         "pumpkin", "ice"),
        ("give the bench a rusty metal texture", "a wooden bench in a park", "a rusty metal bench in a park",
         "bench", "rusty metal"),
        ("I'd like the jacket to be denim", "a man wearing a jacket on a street",
         "a man wearing a denim jacket on a street", "jacket", "denim"),
        ("change the elephant figurine's material to porcelain", "a clay elephant figurine on a shelf",
         "a porcelain elephant figurine on a shelf", "elephant figurine", "porcelain"),
    ),
    pair_strategy="masked",
    filters=FilterThresholds(),
    system_prompt=_system_prompt(
        "texture",
        "change the material or surface texture of one object (wood, marble, gold, glass, wool, ...) while "
        "its shape and everything else in the image stay the same.",
        "the object whose material changes, as the input caption names it (a short noun phrase that appears "
        "in the input caption)",
        "the new material or texture, a short noun or adjective phrase that appears in the output caption",
        "Change only the material, not the object's kind or color alone (that is a local edit).",
    ),
    verbs=("make", "change", "turn", "give", "cover", "retexture"),
)

_BACKGROUND = Task(
    name="background",
    group="region",
    description="Replace the scene behind the main subject while keeping the subject unchanged.",
    examples=_examples(
        ("change the background to a beach", "a dog sitting on a lawn", "a dog sitting on a beach", "lawn", "beach"),
        ("put the car in front of the Eiffel Tower", "a red car parked in a parking lot",
         "a red car parked in front of the Eiffel Tower", "parking lot", "Eiffel Tower"),
        ("replace the background with outer space", "an astronaut standing in a warehouse",
         "an astronaut standing in outer space", "warehouse", "outer space"),
        ("can you make it look like the cat is in a forest?", "a cat sitting in a living room",
         "a cat sitting in a forest", "living room", "forest"),
        ("swap the backdrop for a snowy mountain range", "a hiker posing in front of a brick wall",
         "a hiker posing in front of a snowy mountain range", "brick wall", "snowy mountain range"),
        ("I want the portrait to have a plain white background", "a portrait of a woman in a busy cafe",
         "a portrait of a woman on a plain white background", "busy cafe", "plain white background"),
        ("background: city skyline at night", "a man in a suit standing in an office",
         "a man in a suit standing in front of a city skyline at night", "office", "city skyline at night"),
        ("move the horse to a desert", "a horse standing in a barn", "a horse standing in a desert", "barn", "desert"),
        ("set the background to a tropical jungle", "a parrot perched on a branch in a zoo enclosure",
         "a parrot perched on a branch in a tropical jungle", "zoo enclosure", "tropical jungle"),
        ("Could you replace everything behind the bicycle with a field of lavender?",
         "a bicycle in front of a garage door", "a bicycle in front of a field of lavender", "garage door",
         "field of lavender"),
        ("make the background an underwater coral reef", "a turtle toy on a bathroom floor",
         "a turtle toy in an underwater coral reef", "bathroom floor", "underwater coral reef"),
        ("place the couple on a sandy beach at sunset instead of the street", "a couple holding hands on a street",
         "a couple holding hands on a sandy beach at sunset", "street", "sandy beach at sunset"),
        ("change the backdrop to a library full of bookshelves", "a student with a backpack standing in a hallway",
         "a student with a backpack standing in a library full of bookshelves", "hallway",
         "library full of bookshelves"),
        ("I'd like the motorcycle to be on a race track", "a motorcycle parked in a garage",
         "a motorcycle parked on a race track", "garage", "race track"),
        ("swap the background for a Japanese garden", "a woman in a kimono standing in a shopping mall",
         "a woman in a kimono standing in a Japanese garden", "shopping mall", "Japanese garden"),
    ),
    pair_strategy="masked_complement",
    # Most pixels change, so the source/edit image embeddings and depth maps legitimately drift apart.
    filters=FilterThresholds(clip_image=0.7, depth_l1=None),
    system_prompt=_system_prompt(
        "background",
        "replace the scene behind the main subject with a different place or backdrop; the subject itself "
        "stays exactly as it is.",
        "the current background or setting, as the input caption names it (a short noun phrase that appears "
        "in the input caption)",
        "the new background or setting, a short noun phrase that appears in the output caption",
        "Keep the main subject and its description unchanged in the output caption. Change the place, not the "
        "weather, season or time of day of the same place (that is a global edit).",
    ),
    verbs=("change", "replace", "swap", "set", "move", "put"),
)

# ----------------------------------------------------------------------------------------------------
# Free-form tasks: the whole image may change; no mask.
# ----------------------------------------------------------------------------------------------------

_GLOBAL = Task(
    name="global",
    group="free-form",
    description="Change the whole scene's weather, season, time of day or lighting without changing its content.",
    examples=_examples(
        ("make it winter", "a house with a garden in summer", "a house with a snow-covered garden in winter",
         "", "winter"),
        ("turn the scene into night", "a busy city street during the day", "a busy city street at night", "", "night"),
        ("can you make it rain?", "a couple walking through a park", "a couple walking through a park in the rain",
         "", "rain"),
        ("I want this to look like it was taken at sunset", "a lighthouse on a rocky coast",
         "a lighthouse on a rocky coast at sunset", "", "sunset"),
        ("make it foggy", "a bridge over a river", "a bridge over a river in thick fog", "", "fog"),
        ("autumn", "a tree-lined road in the countryside",
         "a tree-lined road in the countryside in autumn with orange leaves", "", "autumn"),
        ("make it look like a snowstorm is happening", "a cabin in the mountains",
         "a cabin in the mountains during a snowstorm", "", "snowstorm"),
        ("change the time of day to early morning with soft sunrise light", "a farm with a red barn at noon",
         "a farm with a red barn at sunrise", "", "sunrise"),
        ("Could you turn the sunny afternoon into a stormy evening?", "a beach on a sunny afternoon",
         "a beach on a stormy evening", "", "stormy evening"),
        ("make the whole scene look like spring with blossoms everywhere", "a park with bare trees",
         "a park with blossoming trees in spring", "", "spring"),
        ("give the photo golden hour lighting", "a field of wheat", "a field of wheat in golden hour lighting",
         "", "golden hour"),
        ("transform the scene into a moonlit night", "a castle on a hill", "a castle on a hill on a moonlit night",
         "", "moonlit night"),
        ("set the scene during a thunderstorm with lightning", "a city skyline over a harbor",
         "a city skyline over a harbor during a thunderstorm with lightning", "", "thunderstorm"),
        ("I'd like it to look overcast and gloomy", "a sunny village square",
         "a village square on an overcast gloomy day", "", "overcast"),
        ("turn it into a misty dawn", "a lake surrounded by pine trees",
         "a lake surrounded by pine trees at a misty dawn", "", "misty dawn"),
        ("Please change the lighting so the room looks lit only by candlelight", "a dinner table set for two",
         "a dinner table set for two lit by candlelight", "", "candlelight"),
    ),
    pair_strategy="p2p",
    filters=FilterThresholds(),
    system_prompt=_system_prompt(
        "global",
        "change a property of the whole scene (weather, season, time of day or lighting) while every object "
        "stays where it is.",
        'an empty string ""',
        "the new weather, season, time of day or lighting, a short phrase that appears in the output caption",
        "Do not add, remove or replace objects, do not change the background place and do not change the "
        "artistic style; the same scene must stay recognisable.",
    ),
    verbs=("make", "turn", "change", "transform", "set", "give"),
)

_STYLE = Task(
    name="style",
    group="free-form",
    description="Re-render the whole image in an artistic style, medium or artist's manner.",
    examples=_examples(
        ("make it look like a Van Gogh painting", "a wheat field with cypress trees",
         "a wheat field with cypress trees in the style of Van Gogh", "", "Van Gogh"),
        ("turn this into a watercolor painting", "a harbor with fishing boats",
         "a watercolor painting of a harbor with fishing boats", "", "watercolor painting"),
        ("can you render the photo as pixel art?", "a knight standing in front of a castle",
         "pixel art of a knight standing in front of a castle", "", "pixel art"),
        ("anime style", "a girl riding a bicycle down a hill",
         "an anime illustration of a girl riding a bicycle down a hill", "", "anime"),
        ("I want it to look like an oil painting", "a bowl of fruit on a table",
         "an oil painting of a bowl of fruit on a table", "", "oil painting"),
        ("Paint it in the style of a Japanese ukiyo-e woodblock print", "a wave crashing against rocks",
         "a ukiyo-e woodblock print of a wave crashing against rocks", "", "ukiyo-e"),
        ("convert the picture into a comic book illustration", "a man jumping over a puddle",
         "a comic book illustration of a man jumping over a puddle", "", "comic book"),
        ("redraw it as a cubist painting like Picasso", "a woman playing a guitar",
         "a cubist painting of a woman playing a guitar", "", "cubist"),
        ("stylize as pop art", "a portrait of a woman with red lipstick",
         "a pop art portrait of a woman with red lipstick", "", "pop art"),
        ("Could you make this look like a frame from a Studio Ghibli film?", "a cottage in a green valley",
         "a cottage in a green valley in the style of Studio Ghibli", "", "Studio Ghibli"),
        ("make it impressionist", "a garden with a small bridge over a pond",
         "an impressionist painting of a garden with a small bridge over a pond", "", "impressionist"),
        ("turn the photo into a low-poly 3D render", "a fox sitting on a rock",
         "a low-poly 3D render of a fox sitting on a rock", "", "low-poly"),
        ("render it as a claymation scene", "a dog chasing a ball in a backyard",
         "a claymation scene of a dog chasing a ball in a backyard", "", "claymation"),
        ("I'd like this in the style of a Renaissance fresco", "a group of people sitting at a long table",
         "a Renaissance fresco of a group of people sitting at a long table", "", "Renaissance fresco"),
        ("make it look like a vintage travel poster", "a mountain lake with a red canoe",
         "a vintage travel poster of a mountain lake with a red canoe", "", "vintage travel poster"),
        ("transform the image into a cyberpunk digital painting with neon highlights", "a street market",
         "a cyberpunk digital painting of a street market with neon highlights", "", "cyberpunk"),
    ),
    pair_strategy="p2p",
    # A new style redraws every surface; depth estimators read painted/flat styles very differently.
    filters=FilterThresholds(depth_l1=None),
    system_prompt=_system_prompt(
        "style",
        "re-render the whole image in an artistic style, medium or artist's manner (watercolor, anime, pixel "
        "art, Van Gogh, ...) while keeping its content and composition.",
        'an empty string ""',
        "the style, medium or artist, a short phrase that appears in the output caption",
        "Keep every object of the input caption in the output caption. Do not use color filters (sepia, "
        "black and white), weather or lighting changes, or technical maps (sketch, depth map, edge map); "
        "those are other tasks.",
    ),
    verbs=("render", "paint", "make", "turn", "convert", "redraw", "stylize", "transform"),
)

_TEXT = Task(
    name="text",
    group="free-form",
    description="Write, replace or correct visible text in the image, such as signs, labels and captions.",
    examples=_examples(
        ("change the sign to say OPEN", "a shop door with a sign that says CLOSED",
         "a shop door with a sign that says OPEN", "sign", "OPEN"),
        ("write 'Happy Birthday' on the cake", "a white frosted cake on a table",
         'a white frosted cake with "Happy Birthday" written on it on a table', "cake", "Happy Birthday"),
        ("can you make the t-shirt say 'I love NY'?", "a man wearing a plain white t-shirt",
         'a man wearing a white t-shirt that says "I love NY"', "t-shirt", "I love NY"),
        ("Replace the street name on the sign with 'Maple Ave'", "a green street sign reading Oak St",
         "a green street sign reading Maple Ave", "street sign", "Maple Ave"),
        ("put the word 'STOP' on the red sign", "a blank red octagonal sign by the road",
         'a red octagonal sign reading "STOP" by the road', "sign", "STOP"),
        ("I want the billboard to read 'SALE 50% OFF'", "a large billboard above a highway",
         'a large billboard above a highway reading "SALE 50% OFF"', "billboard", "SALE 50% OFF"),
        ("change the text on the mug to 'Best Dad'", 'a coffee mug with the text "Monday" on it',
         'a coffee mug with the text "Best Dad" on it', "mug", "Best Dad"),
        ("spell 'HELLO' in the sand", "a sandy beach with footprints",
         'a sandy beach with the word "HELLO" written in the sand', "sand", "HELLO"),
        ("label the jar 'Sugar'", "a glass jar on a kitchen shelf", 'a glass jar labeled "Sugar" on a kitchen shelf',
         "jar", "Sugar"),
        ("Could you update the title on the book cover to 'The Lost City'?",
         'a book with the title "Ocean Tales" on its cover', 'a book with the title "The Lost City" on its cover',
         "book cover", "The Lost City"),
        ("make the neon sign spell 'Bar' instead of 'Cafe'", "a neon sign that reads Cafe on a brick wall",
         "a neon sign that reads Bar on a brick wall", "neon sign", "Bar"),
        ("type the words 'Welcome Home' on the doormat", "a doormat in front of a blue door",
         'a doormat that says "Welcome Home" in front of a blue door', "doormat", "Welcome Home"),
        ("the license plate should read ABC 123", "a car with a license plate parked on a road",
         'a car with the license plate "ABC 123" parked on a road', "license plate", "ABC 123"),
        ("write 'EXIT' in glowing letters above the door", "a dark hallway with a door at the end",
         'a dark hallway with a door at the end and glowing "EXIT" letters above it', "door", "EXIT"),
        ("fix the typo on the banner so it says 'Congratulations'", 'a party banner that says "Congradulations"',
         'a party banner that says "Congratulations"', "banner", "Congratulations"),
        ("caption the photo with the text 'Summer 2023' at the bottom", "a photo of friends at a lake",
         'a photo of friends at a lake with the text "Summer 2023" at the bottom', "", "Summer 2023"),
    ),
    pair_strategy="p2p",
    filters=FilterThresholds(),
    system_prompt=_system_prompt(
        "text",
        "write new visible text in the image, or replace or correct text that is already there (signs, "
        "labels, shirts, cakes, captions).",
        'the surface or region that carries the text (sign, mug, banner), or an empty string "" for a caption '
        "on the image itself",
        "the new text exactly as it should read, which must appear in the output caption",
        "Keep the text short (one to four words). Quote the text in the instruction. Change only the text, "
        "not the objects around it.",
    ),
    verbs=("write", "change", "replace", "spell", "label", "put", "type"),
)

# ----------------------------------------------------------------------------------------------------
# Vision tasks: the target is computed from the source (grounding, filters, dense maps), not drawn by
# diffusion, so the CLIP direction between captions is a weak signal and its threshold is lowered.
# ----------------------------------------------------------------------------------------------------

_DETECT = Task(
    name="detect",
    group="vision",
    description="Draw a bounding box around every instance of a named object.",
    examples=_examples(
        ("detect the dog", "a dog playing with a ball in a park",
         "a dog playing with a ball in a park with a bounding box around the dog", "dog", ""),
        ("draw a bounding box around the red car", "a red car and a bus at an intersection",
         "a red car and a bus at an intersection with a bounding box around the red car", "red car", ""),
        ("can you find the cat in this picture?", "a cat hiding behind a potted plant",
         "a cat hiding behind a potted plant with a box drawn around the cat", "cat", ""),
        ("locate every pedestrian", "pedestrians crossing a busy street",
         "pedestrians crossing a busy street with a bounding box around each pedestrian", "pedestrian", ""),
        ("I want to know where the bird is, put a box around it", "a small bird perched on a tree branch",
         "a small bird perched on a tree branch with a bounding box around the bird", "bird", ""),
        ("mark the laptop with a rectangle", "a laptop and a coffee cup on a desk",
         "a laptop and a coffee cup on a desk with a rectangle around the laptop", "laptop", ""),
        ("Identify the traffic light", "a traffic light above a city road",
         "a traffic light above a city road with a bounding box around the traffic light", "traffic light", ""),
        ("box the horse", "a horse and a rider jumping a fence",
         "a horse and a rider jumping a fence with a bounding box around the horse", "horse", ""),
        ("spot the bicycle and enclose it in a box", "a bicycle leaning against a lamp post",
         "a bicycle leaning against a lamp post with a bounding box around the bicycle", "bicycle", ""),
        ("Could you detect all the apples in the basket?", "a basket of apples on a picnic blanket",
         "a basket of apples on a picnic blanket with bounding boxes around the apples", "apples", ""),
        ("find the umbrella", "a woman with an umbrella walking in the rain",
         "a woman with an umbrella walking in the rain with a bounding box around the umbrella", "umbrella", ""),
        ("show me where the keys are with a green box", "a set of keys on a cluttered kitchen counter",
         "a set of keys on a cluttered kitchen counter with a green box around the keys", "keys", ""),
        ("detect the boat on the lake", "a boat on a lake surrounded by mountains",
         "a boat on a lake surrounded by mountains with a bounding box around the boat", "boat", ""),
        ("put a bounding box on the giraffe", "a giraffe eating leaves from a tall tree",
         "a giraffe eating leaves from a tall tree with a bounding box around the giraffe", "giraffe", ""),
        ("locate the clock on the wall", "a kitchen with a clock on the wall",
         "a kitchen with a clock on the wall and a bounding box around the clock", "clock", ""),
    ),
    pair_strategy="detect",
    # A thin box outline barely moves CLIP's image embedding, so the directional score stays small even
    # for a correct target; the structure is unchanged by construction, so the depth check is skipped.
    filters=FilterThresholds(clip_direction=0.05, depth_l1=None),
    system_prompt=_system_prompt(
        "detect",
        "draw a bounding box around every instance of one named object; nothing else in the image changes.",
        "the object to detect, as the input caption names it (a short noun phrase that appears in the input "
        "caption)",
        'an empty string ""',
        "The output caption is the input caption followed by a mention of the box(es) around the object. "
        "Ask for boxes or detection, never for masks or outlines of the exact shape (that is segmentation).",
    ),
    verbs=("detect", "find", "locate", "identify", "mark", "spot", "box"),
)

_SEGMENT = Task(
    name="segment",
    group="vision",
    description="Overlay a segmentation mask on every instance of a named object.",
    examples=_examples(
        ("segment the dog", "a dog lying on a rug",
         "a dog lying on a rug with the dog highlighted by a segmentation mask", "dog", ""),
        ("create a mask of the car", "a car parked next to a tree",
         "a car parked next to a tree with the car covered by a colored mask", "car", ""),
        ("can you highlight the person with a segmentation mask?", "a person skateboarding in a skate park",
         "a person skateboarding in a skate park with the person covered by a segmentation mask", "person", ""),
        ("I need the cat segmented", "a cat sitting on a windowsill",
         "a cat sitting on a windowsill with the cat covered by a segmentation mask", "cat", ""),
        ("put a segmentation mask over the sky region", "a mountain range under a blue sky",
         "a mountain range under a blue sky with the sky covered by a segmentation mask", "sky", ""),
        ("Isolate the horse with a pixel-accurate mask", "a horse running across a field",
         "a horse running across a field with the horse covered by a segmentation mask", "horse", ""),
        ("select the motorcycle and overlay a mask on it", "a motorcycle parked on a gravel road",
         "a motorcycle parked on a gravel road with a mask overlaid on the motorcycle", "motorcycle", ""),
        ("segmentation of the bird", "a bird on a wire",
         "a bird on a wire with the bird highlighted by a segmentation mask", "bird", ""),
        ("highlight the exact shape of the vase with a mask", "a vase of flowers on a table",
         "a vase of flowers on a table with the vase highlighted by a mask", "vase", ""),
        ("Could you segment every sheep in the field?", "sheep grazing in a field",
         "sheep grazing in a field with each sheep covered by a segmentation mask", "sheep", ""),
        ("produce an instance mask for the chair", "a chair next to a desk in an office",
         "a chair next to a desk in an office with the chair covered by an instance mask", "chair", ""),
        ("segment the road", "a road winding through a forest",
         "a road winding through a forest with the road highlighted by a segmentation mask", "road", ""),
        ("overlay a translucent mask on the boy", "a boy flying a kite on a hill",
         "a boy flying a kite on a hill with a translucent mask over the boy", "boy", ""),
        ("separate the cup from its surroundings with a mask", "a cup of coffee on a saucer",
         "a cup of coffee on a saucer with the cup highlighted by a segmentation mask", "cup", ""),
        ("fill the train's silhouette with a segmentation mask", "a train arriving at a station",
         "a train arriving at a station with the train covered by a segmentation mask", "train", ""),
    ),
    pair_strategy="segment",
    # As for detect: a mask overlay is a small change for CLIP; structure is unchanged by construction.
    filters=FilterThresholds(clip_direction=0.05, depth_l1=None),
    system_prompt=_system_prompt(
        "segment",
        "overlay a segmentation mask on every instance of one named object, following its exact shape; "
        "nothing else in the image changes.",
        "the object to segment, as the input caption names it (a short noun phrase that appears in the input "
        "caption)",
        'an empty string ""',
        "The output caption is the input caption followed by a mention of the mask over the object. Ask for "
        "a mask or segmentation, never for boxes (that is detection).",
    ),
    verbs=("segment", "mask", "highlight", "isolate", "select", "separate"),
)

_COLOR = Task(
    name="color",
    group="vision",
    description="Apply a global photographic filter such as grayscale, sepia, blur or a contrast change.",
    examples=_examples(
        ("apply a sepia filter", "a photo of a steam train at a station", "a sepia photo of a steam train at a station",
         "", "sepia"),
        ("make it black and white", "a photo of a busy market", "a grayscale photo of a busy market", "", "grayscale"),
        ("can you invert the colors?", "a photo of a red rose", "an inverted-color photo of a red rose",
         "", "inverted"),
        ("blur the image", "a picture of a cat on a sofa", "a blurred picture of a cat on a sofa", "", "blurred"),
        ("sharpen the picture", "a slightly soft photo of a mountain", "a sharpened photo of a mountain",
         "", "sharpened"),
        ("increase the brightness", "a photo of a dim living room", "a brightened photo of a dim living room",
         "", "brightened"),
        ("I want the photo darker overall", "a photo of a sunny beach", "a darkened photo of a sunny beach",
         "", "darkened"),
        ("boost the contrast", "a photo of a city skyline", "a high-contrast photo of a city skyline",
         "", "high-contrast"),
        ("Reduce the contrast to give it a faded look", "a picture of a forest path",
         "a low-contrast picture of a forest path", "", "low-contrast"),
        ("make the colors more vivid and saturated", "a photo of a flower market",
         "a saturated photo of a flower market", "", "saturated"),
        ("desaturate the image", "a photo of a playground", "a desaturated photo of a playground", "", "desaturated"),
        ("apply a warm tone filter to the photo", "a photo of a kitchen", "a warm-toned photo of a kitchen",
         "", "warm-toned"),
        ("give it a cool blue tint", "a photo of a harbor", "a cool-toned photo of a harbor", "", "cool-toned"),
        ("posterize it", "a photo of a parrot", "a posterized photo of a parrot", "", "posterized"),
        ("Could you apply a solarize effect to the picture?", "a picture of a motorcycle",
         "a solarized picture of a motorcycle", "", "solarized"),
        ("emboss filter please", "a photo of a coin on a table", "an embossed photo of a coin on a table",
         "", "embossed"),
    ),
    pair_strategy="filter",
    # Filters change colour statistics that CLIP's caption embeddings describe only weakly ("a sepia
    # photo of ..." vs "a photo of ..."), so the direction threshold is lowered; blur and contrast
    # filters also fool depth estimators although the geometry is untouched, so depth is not checked.
    filters=FilterThresholds(clip_direction=0.1, depth_l1=None),
    system_prompt=_system_prompt(
        "color",
        "apply one global photographic filter to the whole image (color, tone, contrast, brightness, "
        "sharpness) without changing its content.",
        'an empty string ""',
        "the filter, which must be exactly one of: " + ", ".join(COLOR_FILTERS) + "; it must appear word for "
        "word in the output caption (e.g. 'a sepia photo of ...')",
        "Do not change objects, weather, lighting of the scene or artistic style; only the filter.",
    ),
    verbs=("apply", "make", "convert", "adjust", "increase", "reduce", "boost", "tint"),
)

_IMAGE_TO_IMAGE = Task(
    name="image_to_image",
    group="vision",
    description="Convert a photo into a dense map (depth, normals, edges, sketch, pose, segmentation) or a map "
    "back into a photo.",
    examples=_examples(
        ("estimate the depth map", "a living room with a sofa and a lamp",
         "a depth map of a living room with a sofa and a lamp", "", "depth map"),
        ("generate the surface normal map of this scene", "a statue in a courtyard",
         "a normal map of a statue in a courtyard", "", "normal map"),
        ("extract the edges", "a bicycle leaning against a wall", "an edge map of a bicycle leaning against a wall",
         "", "edge map"),
        ("convert the photo into a black-on-white sketch of its contours", "a man playing a guitar",
         "a sketch of a man playing a guitar", "", "sketch"),
        ("show the pose skeleton of the dancer", "a dancer leaping on a stage",
         "a pose skeleton of a dancer leaping on a stage", "", "pose"),
        ("compute a semantic segmentation map of the whole scene", "a street with cars, trees and buildings",
         "a segmentation map of a street with cars, trees and buildings", "", "segmentation map"),
        ("can you show me how far away everything is as a depth map?", "a hallway with doors on both sides",
         "a depth map of a hallway with doors on both sides", "", "depth map"),
        ("turn this sketch into a realistic photo", "a sketch of a cottage by a river",
         "a photo of a cottage by a river", "sketch", "photo"),
        ("generate a realistic image from this depth map", "a depth map of a kitchen", "a photo of a kitchen",
         "depth map", "photo"),
        ("I want a photo of a real person in exactly this pose", "a pose skeleton of a person raising both arms",
         "a photo of a person raising both arms", "pose", "photo"),
        ("make a real image from this segmentation map", "a segmentation map of a park with a lake",
         "a photo of a park with a lake", "segmentation map", "photo"),
        ("canny edges", "a portrait of an old man", "an edge map of a portrait of an old man", "", "edge map"),
        ("Could you predict the surface normals for this picture?", "a pile of rocks on a beach",
         "a normal map of a pile of rocks on a beach", "", "normal map"),
        ("convert the edge map to a natural photo", "an edge map of a sports car", "a photo of a sports car",
         "edge map", "photo"),
        ("produce the human pose keypoints", "two people dancing at a wedding",
         "a pose skeleton of two people dancing at a wedding", "", "pose"),
    ),
    pair_strategy="image_to_image",
    # A map and a photo of the same scene are far apart for CLIP and for a depth model by design.
    filters=FilterThresholds(clip_direction=0.1, clip_image=0.5, depth_l1=None),
    system_prompt=_system_prompt(
        "image_to_image",
        "convert a photo into a dense map of it (one of: " + ", ".join(IMAGE_MAPS) + "), or convert such a map "
        "back into a realistic photo.",
        'for map to photo, the kind of map the input is (one of the list above); for photo to map, an empty '
        'string ""',
        'for photo to map, the kind of map to produce (one of the list above); for map to photo, "photo"; it '
        "must appear in the output caption",
        "Describe the output as 'a <map kind> of ...' or 'a photo of ...', with the same scene as the input. "
        "Do not ask for artistic styles or color filters.",
    ),
    verbs=("generate", "estimate", "produce", "convert", "compute", "extract", "predict", "turn"),
)

#: The built-in tasks in Emu Edit's order: region-based, free-form, vision.
BUILTIN_TASKS = [
    _LOCAL,
    _REMOVE,
    _ADD,
    _TEXTURE,
    _BACKGROUND,
    _GLOBAL,
    _STYLE,
    _TEXT,
    _DETECT,
    _SEGMENT,
    _COLOR,
    _IMAGE_TO_IMAGE,
]
